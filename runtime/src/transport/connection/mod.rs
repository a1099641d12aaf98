//! One WebSocket connection: a single task that reads frames, dispatches
//! the calls in them, and writes replies in bursts (feed every frame that
//! is ready, then flush once).
//!
//! Calls answered off the task (on the action pool, or later by an inline
//! action) are kept by the task itself and polled with everything else:
//! their replies are written as they come, in whatever order the actions
//! finish, and the replies of calls answered together go out in one
//! flush. Pushes come through a bounded queue. Every write has a deadline
//! (`write_timeout_ms`): a client that stops reading is disconnected
//! instead of holding its task for ever. On shutdown the connection stops
//! reading, lets its running calls finish and answers them (within the
//! grace period), then sends Close 1001.
//!
//! Here: the task's loop and its shutdown; `reader`: frames in, parsed and
//! dispatched; `writer`: frames out, in bursts, under deadlines;
//! `timers`: the auth timeout and the token's expiry; `running`: the
//! calls answered off the task; `batch`: frames read ahead in a burst.

mod batch;
mod reader;
mod running;
mod timers;
mod writer;

use crate::auth::{Identity, ends_at_ms, now_millis, now_secs};
use crate::lifecycle;
use crate::rooms::hub::{CloseRequest, ConnFlow, ConnHandle, Outgoing};
use crate::rooms::queue;
use crate::rpc::dispatch::{Dispatched, PoolCall, dispatch, dispatch_now, is_action_call};
use crate::rpc::error::{ErrorCode, RpcError};
use crate::rpc::protocol::{self, Envelope, Frame, FrameSource, Refusal};
use crate::rpc::session::Session;
use crate::state::ServerState;
use crate::transport::read_ahead::ReadState;
use crate::transport::websocket::WebSocket;
use bytes::Bytes;
use futures_util::future::{self, Either};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use timers::{Beat, Timer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Turns of a connection's loop between its checks for shutdown and its
/// timer outside of waiting for them (see `Connection::run`).
const STARVATION_CHECK_TURNS: u32 = 32;

/// Most frames written before a flush is forced.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// How a connection the client closed ends.
const CLIENT_CLOSED: &str = "closed by the client";

/// The reason sent with Close 4008.
const SLOW_CONSUMER: &str = "slow consumer: outbound queue overflowed";

/// How long before a sign-in ends the client is warned (`token.expiring`).
const EXPIRY_WARNING: Duration = Duration::from_secs(30);

/// The longest the timer is set for (a year); a later expiry re-arms then.
const MAX_TIMER_SECS: u64 = 365 * 24 * 3600;

/// How a connection ended.
#[derive(Debug)]
pub struct Ended {
    /// Why, in a few words.
    pub reason: &'static str,
    /// Who was signed in at the end, if anyone.
    pub user: Option<Arc<str>>,
}

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// JSON-RPC 2.0 (`/ws`).
    JsonRpc,
    /// Echoes every text and binary message back verbatim (`/autobahn`,
    /// only with `conformance_echo`): for the Autobahn TestSuite, which
    /// then tests the very reader, writer and limits `/ws` uses.
    Echo,
}

/// Serves one upgraded connection until it closes or the server stops.
///
/// Not an `async fn`: the connection is built here, so the future holds
/// it once (an `async fn` would also keep its arguments). An idle
/// connection costs the size of this future's largest state; spawn it as
/// a task of its own rather than await it inside another.
pub fn serve<S>(
    ws: WebSocket<S>,
    state: Arc<ServerState>,
    session: Session,
    outbound: Outbound,
    shutdown: CancellationToken,
    speaks: Speaks,
) -> impl Future<Output = Ended>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + ReadState,
{
    // A span entered and left at every poll costs on every call, and the
    // subscriber holds a few hundred bytes per span: only when debug
    // logging is on does the connection carry one. Otherwise its few
    // info-level events get a span made for them (`conn_info!`).
    let traced = tracing::enabled!(tracing::Level::DEBUG);
    let span = traced.then(|| conn_span(&session));
    let mut connection = Connection::new(ws, state, session, outbound, traced);
    connection.echo = speaks == Speaks::Echo;
    match span {
        None => Either::Left(connection.run(shutdown)),
        Some(span) => Either::Right(connection.run(shutdown).instrument(span)),
    }
}

/// The span a connection's events are logged in.
fn conn_span(session: &Session) -> tracing::Span {
    tracing::info_span!(
        "conn",
        id = session.conn_id,
        user = session.identity().map(|i| &*i.user),
        addr = &*session.handshake.remote_addr
    )
}

/// Logs an info-level event of a connection in its span (see `serve`).
macro_rules! conn_info {
    ($conn:expr, $($event:tt)+) => {
        $conn.log_span().in_scope(|| tracing::info!($($event)+))
    };
}
use conn_info;

/// A connection's outbound queue, registered in the hub (so pushes reach
/// it) before the upgrade is answered: a client that has its `101` can be
/// sent to at once.
#[derive(Debug)]
pub struct Outbound {
    /// How pushes reach the connection.
    pub handle: ConnHandle,
    /// The queue's receiving end, drained by the connection's task.
    pub rx: queue::Receiver<Outgoing>,
}

impl Outbound {
    /// Creates the queue and registers it in the hub.
    pub fn open(
        state: &ServerState,
        conn_id: u64,
        identity: Option<Arc<Identity>>,
        remote_addr: &str,
    ) -> Outbound {
        let (tx, rx) = queue::channel(state.config.outbound_queue);
        let flow = Arc::new(ConnFlow::new(state.config.max_room_creations_per_minute));
        let user = identity.as_ref().map(|i| Arc::clone(&i.user));
        flow.set_identity(identity);
        let handle = ConnHandle {
            flow,
            conn_id,
            user,
            tx,
            kick: CancellationToken::new(),
            connected_at: now_secs(),
            remote_addr: Arc::from(remote_addr),
        };
        state.hub.register(handle.clone());
        Outbound { handle, rx }
    }
}

struct Connection<S> {
    ws: WebSocket<S>,
    state: Arc<ServerState>,
    session: Session,
    /// Handed to running calls; dropped at shutdown so the queue ends when
    /// the last running call has answered.
    replies_tx: Option<queue::Sender<Outgoing>>,
    replies_rx: queue::Receiver<Outgoing>,
    /// Cancelled by a push that found the queue full: close with 4008.
    kick: CancellationToken,
    /// Shared with those who push: a close the server asked for.
    flow: Arc<ConnFlow>,
    /// Frames written since the last flush.
    unflushed: usize,
    /// Frames read ahead of their handling, during a burst.
    batch: Option<Box<batch::Batch>>,
    /// Calls answered off the task, made on the first one.
    running: running::Running,
    /// While frames are handled back to back (no wait between them): the
    /// end of the last call answered at once, taken as the next one's
    /// start, so each call reads the clock once. Cleared whenever the loop
    /// may have waited, before the next frame is handled.
    clock: Option<std::time::Instant>,
    write_timeout: Duration,
    /// The one timer (auth timeout or token expiry), reset rather than
    /// recreated so the read loop registers no timer per frame.
    timer: Pin<Box<Sleep>>,
    timer_for: Option<Timer>,
    /// `session.sign_ins` when the timer was last armed.
    armed_at_sign_in: u64,
    /// The sign-in (by count) whose expiry warning was already sent.
    warned_sign_in: u64,
    connected_at: Instant,
    /// Whether the task runs in the connection's span (debug logging).
    traced: bool,
    /// The heartbeat: where it stands, when it is next due, and whether
    /// anything came from the peer since it was last due.
    beat: Beat,
    beat_at: Instant,
    heard: bool,
    /// Echo messages instead of reading JSON-RPC ([`Speaks::Echo`]).
    echo: bool,
}

/// What one step of the loop decided.
enum Next {
    Continue,
    Close(CloseCode, &'static str),
    /// A close the server asked for (`disconnect`, a revoked token).
    Asked(CloseRequest),
    Shutdown,
    Stop(&'static str),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + ReadState> Connection<S> {
    fn new(
        ws: WebSocket<S>,
        state: Arc<ServerState>,
        mut session: Session,
        outbound: Outbound,
        traced: bool,
    ) -> Self {
        let write_timeout = state.config.write_timeout();
        let Outbound {
            handle,
            rx: replies_rx,
        } = outbound;
        let replies_tx = handle.tx.clone();
        let kick = handle.kick.clone();
        let flow = Arc::clone(&handle.flow);
        session.handle = Some(handle);
        let mut connection = Connection {
            ws,
            state,
            session,
            replies_tx: Some(replies_tx),
            replies_rx,
            kick,
            flow,
            unflushed: 0,
            batch: None,
            running: running::Running::default(),
            clock: None,
            write_timeout,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_for: None,
            armed_at_sign_in: 0,
            warned_sign_in: 0,
            connected_at: Instant::now(),
            traced,
            beat: Beat::Off,
            beat_at: Instant::now(),
            heard: false,
            echo: false,
        };
        let ping_interval = connection.state.config.ping_interval_ms;
        if ping_interval > 0 {
            connection.beat = Beat::Listening;
            connection.beat_at = Instant::now() + Duration::from_millis(ping_interval);
        }
        connection.arm_timer();
        connection
    }

    /// Runs the connection to its end. Not an `async fn`: one taking
    /// `self` by value keeps it twice in its state (the argument, and the
    /// binding the body moves it into), 696 bytes more per connection.
    /// Here the block captures the connection once and works on it in
    /// place.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold the connection twice (see above)"
    )]
    fn run(mut self, shutdown: CancellationToken) -> impl Future<Output = Ended> {
        async move {
            let why = self.serve_until_closed(&shutdown).await;
            tracing::debug!(why, "disconnected");
            std::mem::take(&mut self.running).finish_detached();
            // Out of the hub first: a plugin thread that looks the connection
            // up from now on cannot join it to a room it would never leave.
            self.state.hub.unregister(self.session.conn_id);
            Box::pin(self.state.broker.leave_all(self.session.conn_id)).await;
            Ended {
                reason: why,
                user: self.session.identity().map(|i| Arc::clone(&i.user)),
            }
        }
    }

    /// Reads, dispatches and writes until the connection closes; says why.
    async fn serve_until_closed(&mut self, shutdown: &CancellationToken) -> &'static str {
        tracing::debug!("connected");
        let mut turns: u32 = 0;
        loop {
            // Every so many turns, checked here too: a client that keeps
            // frames queued must not starve shutdown or its own auth
            // timeout or expiry (each check costs a lock or a clock read,
            // too much for every frame; calls past an expiry are refused
            // on their own).
            turns = turns.wrapping_add(1);
            let check = turns.is_multiple_of(STARVATION_CHECK_TURNS);
            let next = if check && shutdown.is_cancelled() {
                Next::Shutdown
            } else if check && self.timer_for.is_some() && self.timer.deadline() <= Instant::now() {
                self.clock = None;
                Box::pin(self.on_timer()).await
            } else if self.unflushed > 0 || self.batch.is_some() {
                self.step_before_flush().await
            } else {
                self.clock = None;
                // The queue carries the signals too: a kick, a close the
                // server asked for and shutdown each nudge it, so there is
                // one waiter per connection, not a future per signal made
                // and dropped at every turn (two locks each).
                tokio::select! {
                    biased;
                    received = self.replies_rx.recv_or_nudge() => match received {
                        queue::Received::Item(first) => match self.write_burst_now(first) {
                            Ok(next) => next,
                            Err(first) => Box::pin(self.write_burst(first)).await,
                        },
                        queue::Received::Nudged => self.signalled(shutdown),
                        // The task holds a sender until the loop ends.
                        queue::Received::Ended => Next::Stop("the outbound queue ended"),
                    },
                    answer = self.running.next_answer() => match answer {
                        Some(reply) => match self.write_answer_now(reply) {
                            Ok(next) => next,
                            Err(reply) => Box::pin(self.write_ready(reply)).await,
                        },
                        None => Next::Continue,
                    },
                    // The general path of a frame is boxed (see
                    // `on_frame`), as is a burst of writes: inline, they
                    // would make every idle connection's task that much
                    // larger (1,704 bytes with both boxed, 2,472 with
                    // neither).
                    incoming = self.ws.next() => self.on_frame(incoming).next().await,
                    () = &mut self.timer, if self.timer_for.is_some() => Box::pin(self.on_timer()).await,
                }
            };
            if self.session.sign_ins != self.armed_at_sign_in {
                self.arm_timer();
            }
            match next {
                Next::Continue => {}
                Next::Close(code, reason) => {
                    crate::metrics::global().connection_closed(code.into());
                    Box::pin(self.close(code, reason.into())).await;
                    break reason;
                }
                Next::Asked(asked) => {
                    conn_info!(self, code = asked.code, reason = %asked.reason, "closed by the server");
                    crate::metrics::global().connection_closed(asked.code);
                    Box::pin(self.close(CloseCode::from(asked.code), clip_reason(asked.reason)))
                        .await;
                    break "closed by the server";
                }
                Next::Shutdown => {
                    crate::metrics::global().connection_closed(1001);
                    Box::pin(self.finish_running_calls()).await;
                    Box::pin(self.close(CloseCode::Away, "the server is shutting down".into()))
                        .await;
                    break "server shutdown";
                }
                Next::Stop(why) => {
                    crate::metrics::global()
                        .connection_ended_without_server_close(why == CLIENT_CLOSED);
                    break why;
                }
            }
        }
    }

    /// What a nudge of the queue signalled: shutdown, a kick (a full
    /// queue: 4008) or a close the server asked for; else nothing (a
    /// nudge may be late for a signal already handled).
    fn signalled(&self, shutdown: &CancellationToken) -> Next {
        if shutdown.is_cancelled() {
            return Next::Shutdown;
        }
        if !self.replies_rx.is_sealed() {
            return Next::Continue;
        }
        match self.flow.take_close_request() {
            Some(asked) => Next::Asked(asked),
            None => Next::Close(CloseCode::from(4008), SLOW_CONSUMER),
        }
    }

    /// The span to log an event in: none when the task runs in the
    /// connection's span already, else one made for the event.
    fn log_span(&self) -> tracing::Span {
        if self.traced {
            tracing::Span::none()
        } else {
            conn_span(&self.session)
        }
    }

    /// At shutdown: read nothing more, but answer the calls still running,
    /// until the last one has answered or the grace period ends.
    async fn finish_running_calls(&mut self) {
        // Stop pushes first: rooms and the hub hold senders to the queue,
        // which must end when the last running call has answered.
        // Out of the hub first: a plugin thread that looks the connection
        // up from now on cannot join it to a room it would never leave.
        self.state.hub.unregister(self.session.conn_id);
        self.state.broker.leave_all(self.session.conn_id).await;
        self.session.handle = None;
        self.replies_tx = None;
        let deadline = Instant::now() + self.state.config.shutdown_grace();
        let mut queue_open = true;
        while queue_open || !self.running.is_empty() {
            let next = tokio::select! {
                reply = self.replies_rx.recv(), if queue_open => match reply {
                    Some(reply) => Box::pin(self.write_burst(reply)).await,
                    None => {
                        queue_open = false;
                        Next::Continue
                    }
                },
                answer = self.running.next_answer() => match answer {
                    Some(reply) => Box::pin(self.write(reply)).await,
                    None => Next::Continue,
                },
                () = tokio::time::sleep_until(deadline) => break,
            };
            if !matches!(next, Next::Continue) || !matches!(self.flush().await, Next::Continue) {
                return;
            }
        }
        let _ = self.flush().await;
    }

    async fn close(&mut self, code: CloseCode, reason: Utf8Bytes) {
        self.replies_rx.close();
        self.drop_queued();
        let frame = CloseFrame { code, reason };
        let grace = self.state.config.shutdown_grace();
        let _ = timeout(grace, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() {
                // Wait for the client's close reply (or the end of the stream).
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        })
        .await;
    }
}

/// A close reason cut to what a Close frame carries (123 bytes), on a
/// character boundary.
fn clip_reason(mut reason: String) -> Utf8Bytes {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason.into()
}
