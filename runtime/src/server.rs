//! The listener: accepts TCP connections, serves HTTP/1.1 with upgrades on
//! each, and shuts down cleanly when the injected shutdown future resolves
//! (Close 1001 to every connection, a grace period, then plugin shutdown
//! hooks).

use crate::http::Routes;
use crate::state::ServerState;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves `listener` until `shutdown` resolves, then stops: no new
/// connections, Close 1001 to open ones, and up to the configured grace
/// period for them to finish.
pub async fn run(
    listener: TcpListener,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) {
    let routes = Routes {
        state: Arc::clone(&state),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _remote)) => {
                    backoff = Duration::from_millis(10);
                    let routes = routes.clone();
                    routes.tracker.clone().spawn(serve_http(stream, routes));
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
    routes.tracker.close();
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
    let all = u32::try_from(state.config.max_inflight_calls).unwrap_or(u32::MAX);
    if tokio::time::timeout(
        state.config.shutdown_grace(),
        state.inflight.acquire_many(all),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            "action calls still running after the grace period; shutting plugins down anyway"
        );
    }
    for plugin in &state.registry.snapshot().plugins {
        plugin.shutdown();
    }
    tracing::info!("stopped");
}

async fn serve_http(stream: TcpStream, routes: Routes) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("could not set TCP_NODELAY: {e}");
    }
    let shutdown = routes.shutdown.clone();
    let service = service_fn(move |req| routes.clone().handle(req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
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
