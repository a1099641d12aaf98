//! The listener: accepts TCP connections (each takes a place among the
//! pending ones first, or is refused, see [`crate::transport::pending`]),
//! serves HTTP/1.1 with upgrades on
//! each (over TLS when an acceptor is given), and shuts down cleanly when
//! the injected shutdown future resolves (Close 1001 to every connection, a
//! grace period, then plugin shutdown hooks). It also runs the room sweep.

use crate::state::ServerState;
use crate::transport::http::Routes;
use crate::transport::pending::{self, PendingSlot};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `listener` until `shutdown` resolves, then stops: no new
/// connections, Close 1001 to open ones, and up to the configured grace
/// period for them to finish. With `tls` (see [`crate::transport::tls`]), every
/// connection is TLS (`https://`, `wss://`); without it, plain text.
pub async fn run(
    listener: TcpListener,
    state: Arc<ServerState>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let routes = Routes {
        state: Arc::clone(&state),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        remote: None,
    };
    tokio::pin!(shutdown);
    let sweeper = tokio::spawn(sweep_rooms(Arc::clone(&state), routes.shutdown.clone()));
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    backoff = Duration::from_millis(10);
                    match state.pending.admit(remote, &state.config.trusted_proxies) {
                        Ok(slot) => {
                            let routes = Routes { remote: Some(remote), ..routes.clone() };
                            routes.tracker.clone().spawn(serve_tcp(stream, tls.clone(), routes, slot));
                        }
                        Err(full) => {
                            routes.tracker.spawn(pending::refuse(stream, full, tls.is_some()));
                        }
                    }
                }
                Err(e) => {
                    // Usually out of file descriptors: wait for some to free.
                    tracing::warn!("accept failed: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = state.connections();
    tracing::info!(connections = open, "shutting down: closing connections");
    routes.shutdown.cancel();
    // Connections wait on their queues: nudged, each sees the token.
    state.hub.nudge_all();
    routes.tracker.close();
    sweeper.abort();
    let grace = state.config.shutdown_grace() + Duration::from_millis(500);
    if tokio::time::timeout(grace, routes.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = state.connections(),
            "connections still open after the grace period; stopping anyway"
        );
    }
    // Let calls still running on plugin threads finish before the plugins
    // are told to shut down (bounded: a hung call cannot hold the exit).
    if tokio::time::timeout(state.config.shutdown_grace(), state.inflight.all_free())
        .await
        .is_err()
    {
        tracing::warn!(
            "action calls still running after the grace period; shutting plugins down anyway"
        );
    }
    state.registry.shutdown();
    tracing::info!("stopped");
}

/// One accepted connection, in its own task: the TLS handshake (if any,
/// bounded by `handshake_timeout_ms` and by shutdown), then HTTP. A
/// failed handshake only ends this connection. It holds its place among
/// the pending connections (`_pending`) until it has upgraded (hyper's
/// connection then ends, handing the socket to the WebSocket's task) or
/// closed.
async fn serve_tcp(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    routes: Routes,
    _pending: PendingSlot,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("could not set TCP_NODELAY: {e}");
    }
    let Some(acceptor) = tls else {
        return serve_http(stream, routes).await;
    };
    let peer = stream.peer_addr().ok();
    let limit = routes.state.config.handshake_timeout();
    let handshake = tokio::time::timeout(limit, acceptor.accept(stream));
    let shutdown = routes.shutdown.clone();
    tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => serve_http(stream, routes).await,
            Ok(Err(e)) => tracing::debug!(?peer, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(
                ?peer,
                "TLS handshake not finished after {limit:?}; dropped"
            ),
        },
        () = shutdown.cancelled() => {}
    }
}

async fn serve_http<S>(stream: S, routes: Routes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = routes.shutdown.clone();
    let header_timeout = routes.state.config.handshake_timeout();
    let service = service_fn(move |req| routes.clone().handle(req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!("http connection ended: {e}");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// How often expired history is dropped and empty rooms forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Freed history past which memory is handed back to the OS after a sweep.
const RELEASE_AFTER_BYTES: usize = 4 << 20;

/// Every [`SWEEP_EVERY`], drops expired history and forgets rooms with no
/// members and no history left; once a lot of history was freed, hands
/// the memory back to the OS.
async fn sweep_rooms(state: Arc<ServerState>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    let mut released = 0usize;
    loop {
        tokio::select! {
            _ = every.tick() => {
                released += state.broker.sweep();
                state.user_rates.sweep();
                if released >= RELEASE_AFTER_BYTES {
                    released = 0;
                    tokio::task::spawn_blocking(crate::sys::release_free_memory);
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
