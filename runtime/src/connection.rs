//! One WebSocket connection: a single task that reads frames, dispatches
//! the calls in them, and writes replies in bursts (feed every frame that
//! is ready, then flush once).
//!
//! Replies of running actions come back through a bounded queue, in
//! whatever order the actions finish. Every write has a deadline
//! (`write_timeout_ms`): a client that stops reading is disconnected
//! instead of holding its task for ever. On shutdown the connection stops
//! reading, lets its running calls finish and answers them (within the
//! grace period), then sends Close 1001.

use crate::auth::{ends_at_ms, now_millis, now_secs};
use crate::dispatch::{Dispatched, dispatch};
use crate::hub::{ConnFlow, ConnHandle, Outgoing, outgoing};
use crate::lifecycle;
use crate::protocol::{self, Envelope, Frame, Refusal};
use crate::rpc_error::{ErrorCode, RpcError};
use crate::session::Session;
use crate::state::ServerState;
use bytes::Bytes;
use futures_util::future::{self, Either};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most frames written before a flush is forced.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// The reason sent with Close 4008.
const SLOW_CONSUMER: &str = "slow consumer: outbound queue overflowed";

/// How long before a sign-in ends the client is warned (`token.expiring`).
const EXPIRY_WARNING: Duration = Duration::from_secs(30);

/// The longest the timer is set for (a year); a later expiry re-arms then.
const MAX_TIMER_SECS: u64 = 365 * 24 * 3600;

/// Whether a read error is the client breaking the WebSocket protocol
/// (RFC 6455: unmasked frames, reserved bits or opcodes, bad
/// fragmentation), which is answered with Close 1002 before the connection
/// ends; other errors (a reset, an I/O failure) leave nothing to answer.
fn is_peer_violation(error: &ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::NonZeroReservedBits
            | ProtocolError::UnmaskedFrameFromClient
            | ProtocolError::FragmentedControlFrame
            | ProtocolError::ControlFrameTooBig
            | ProtocolError::UnknownControlFrameType(_)
            | ProtocolError::UnknownDataFrameType(_)
            | ProtocolError::UnexpectedContinueFrame
            | ProtocolError::ExpectedFragment(_)
            | ProtocolError::InvalidOpcode(_)
            | ProtocolError::InvalidCloseSequence
    )
}

/// How a connection ended.
#[derive(Debug)]
pub struct Ended {
    /// Why, in a few words.
    pub reason: &'static str,
    /// Who was signed in at the end, if anyone.
    pub user: Option<Arc<str>>,
}

/// What the connection's one timer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// Not signed in yet: close with 4001 when it fires.
    AuthTimeout,
    /// The sign-in ends soon: warn the client.
    ExpiryWarning,
    /// The sign-in has ended: close with 4002.
    Expiry,
}

/// Serves one upgraded connection until it closes or the server stops.
///
/// Not an `async fn`: the connection is built here, so the future holds
/// it once (an `async fn` would also keep its arguments). An idle
/// connection costs the size of this future's largest state; spawn it as
/// a task of its own rather than await it inside another.
pub fn serve<S>(
    ws: WebSocketStream<S>,
    state: Arc<ServerState>,
    session: Session,
    outbound: Outbound,
    shutdown: CancellationToken,
) -> impl Future<Output = Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let span = tracing::info_span!(
        "conn",
        id = session.conn_id,
        user = session.identity().map(|i| &*i.user)
    );
    Connection::new(ws, state, session, outbound)
        .run(shutdown)
        .instrument(span)
}

/// A connection's outbound queue, registered in the hub (so pushes reach
/// it) before the upgrade is answered: a client that has its `101` can be
/// sent to at once.
#[derive(Debug)]
pub struct Outbound {
    /// How pushes reach the connection.
    pub handle: ConnHandle,
    /// The queue's receiving end, drained by the connection's task.
    pub rx: mpsc::Receiver<Outgoing>,
}

impl Outbound {
    /// Creates the queue and registers it in the hub.
    pub fn open(
        state: &ServerState,
        conn_id: u64,
        user: Option<Arc<str>>,
        remote_addr: &str,
    ) -> Outbound {
        let (tx, rx) = mpsc::channel(state.config.outbound_queue);
        let handle = ConnHandle {
            flow: Arc::new(ConnFlow::new(state.config.max_room_creations_per_minute)),
            conn_id,
            user,
            tx,
            kick: CancellationToken::new(),
            connected_at: now_secs(),
            remote_addr: Arc::from(remote_addr),
            data: Arc::default(),
        };
        state.hub.register(handle.clone());
        Outbound { handle, rx }
    }
}

struct Connection<S> {
    ws: WebSocketStream<S>,
    state: Arc<ServerState>,
    session: Session,
    /// Handed to running calls; dropped at shutdown so the queue ends when
    /// the last running call has answered.
    replies_tx: Option<mpsc::Sender<Outgoing>>,
    replies_rx: mpsc::Receiver<Outgoing>,
    /// Cancelled by a push that found the queue full: close with 4008.
    kick: CancellationToken,
    /// The queue's byte count, shared with those who push.
    flow: Arc<ConnFlow>,
    /// Frames written since the last flush.
    unflushed: usize,
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
}

/// What one step of the loop decided.
enum Next {
    Continue,
    Close(CloseCode, &'static str),
    Shutdown,
    Stop(&'static str),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(
        ws: WebSocketStream<S>,
        state: Arc<ServerState>,
        mut session: Session,
        outbound: Outbound,
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
            write_timeout,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_for: None,
            armed_at_sign_in: 0,
            warned_sign_in: 0,
            connected_at: Instant::now(),
        };
        connection.arm_timer();
        connection
    }

    /// Points the timer at the next thing due: the auth timeout while not
    /// signed in, else the expiry warning, else the expiry itself.
    fn arm_timer(&mut self) {
        self.armed_at_sign_in = self.session.sign_ins;
        let next = match self.session.identity() {
            None => self
                .state
                .config
                .auth_timeout()
                .map(|limit| (self.connected_at + limit, Timer::AuthTimeout)),
            Some(identity) => identity.expires_at.map(|exp| {
                let now = now_millis();
                // Capped, so an absurd expiry cannot overflow the clock. The
                // close is armed for `exp + leeway` to the millisecond, the
                // moment calls start being refused.
                let until = |ms: u64| {
                    let wait =
                        Duration::from_millis(ms.saturating_sub(now).min(MAX_TIMER_SECS * 1000));
                    Instant::now()
                        .checked_add(wait)
                        .unwrap_or_else(Instant::now)
                };
                let close_at = until(ends_at_ms(exp, self.state.auth.leeway()));
                let warn_at = until(ends_at_ms(exp, 0))
                    .checked_sub(EXPIRY_WARNING)
                    .unwrap_or_else(Instant::now);
                if self.warned_sign_in != self.session.sign_ins && warn_at < close_at {
                    (warn_at, Timer::ExpiryWarning)
                } else {
                    (close_at, Timer::Expiry)
                }
            }),
        };
        self.timer_for = next.map(|(_, kind)| kind);
        if let Some((at, _)) = next {
            self.timer.as_mut().reset(at);
        }
    }

    async fn on_timer(&mut self) -> Next {
        let fired = self.timer_for.take();
        match fired {
            Some(Timer::AuthTimeout) if self.session.identity().is_none() => {
                tracing::info!("closing: no valid token within auth_timeout");
                Next::Close(CloseCode::from(4001), "no valid token before auth_timeout")
            }
            Some(Timer::ExpiryWarning) => {
                self.warned_sign_in = self.session.sign_ins;
                let expires_at = self
                    .session
                    .identity()
                    .and_then(|i| i.expires_at)
                    .unwrap_or_default();
                let push = serde_json::json!({
                    "jsonrpc": "2.0",
                    "method": "rpc.event",
                    "params": {"event": "token.expiring", "data": {
                        "expires_at": expires_at,
                        "in_secs": expires_at.saturating_sub(now_secs()),
                    }},
                });
                self.arm_timer();
                self.write(push.to_string()).await
            }
            Some(Timer::Expiry)
                if self
                    .session
                    .identity()
                    .is_some_and(|i| i.expired_at(now_millis(), self.state.auth.leeway())) =>
            {
                tracing::info!("closing: the token expired and was not refreshed");
                Next::Close(
                    CloseCode::from(4002),
                    "the token expired and was not refreshed",
                )
            }
            _ => {
                self.arm_timer();
                Next::Continue
            }
        }
    }

    async fn run(mut self, shutdown: CancellationToken) -> Ended {
        tracing::debug!("connected");
        let why = loop {
            let next = if shutdown.is_cancelled() {
                Next::Shutdown
            } else if self.timer_for.is_some() && self.timer.deadline() <= Instant::now() {
                // Checked here too: a client that keeps frames queued must
                // not starve its own auth timeout or expiry.
                self.on_timer().await
            } else if self.unflushed > 0 {
                self.step_before_flush().await
            } else {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => Next::Shutdown,
                    () = self.kick.cancelled() => Next::Close(CloseCode::from(4008), SLOW_CONSUMER),
                    Some(first) = self.replies_rx.recv() => self.write_burst(first).await,
                    incoming = self.ws.next() => self.on_incoming(incoming).await,
                    () = &mut self.timer, if self.timer_for.is_some() => self.on_timer().await,
                }
            };
            if self.session.sign_ins != self.armed_at_sign_in {
                self.arm_timer();
            }
            match next {
                Next::Continue => {}
                Next::Close(code, reason) => {
                    self.close(code, reason).await;
                    break reason;
                }
                Next::Shutdown => {
                    self.finish_running_calls().await;
                    self.close(CloseCode::Away, "the server is shutting down")
                        .await;
                    break "server shutdown";
                }
                Next::Stop(why) => break why,
            }
        };
        tracing::debug!(why, "disconnected");
        // Out of the hub first: a plugin thread that looks the connection
        // up from now on cannot join it to a room it would never leave.
        self.state.hub.unregister(self.session.conn_id);
        self.state
            .rooms
            .leave_all(&self.state.hub, self.session.conn_id);
        Ended {
            reason: why,
            user: self.session.identity().map(|i| Arc::clone(&i.user)),
        }
    }

    /// With writes buffered: handle whatever is ready at once (queued
    /// replies, frames already received), and flush as soon as nothing is,
    /// or after [`MAX_FRAMES_PER_FLUSH`] frames. One flush then covers many
    /// replies.
    async fn step_before_flush(&mut self) -> Next {
        if self.unflushed < MAX_FRAMES_PER_FLUSH {
            if let Ok(first) = self.replies_rx.try_recv() {
                return self.write_burst(first).await;
            }
            if let Some(incoming) = self.ws.next().now_or_never() {
                return self.on_incoming(incoming).await;
            }
        }
        self.flush().await
    }

    async fn flush(&mut self) -> Next {
        self.unflushed = 0;
        let flush = timeout(self.write_timeout, self.ws.flush());
        let outcome = tokio::select! {
            biased;
            outcome = flush => outcome,
            () = self.kick.cancelled() => return Next::Close(CloseCode::from(4008), SLOW_CONSUMER),
        };
        match outcome {
            Ok(Ok(())) => Next::Continue,
            Ok(Err(e)) => {
                tracing::debug!("write failed: {e}");
                Next::Stop("write failed")
            }
            Err(_) => self.stalled(),
        }
    }

    fn stalled(&self) -> Next {
        self.state.hub.count_stalled_write();
        tracing::info!(
            "dropping the connection: the client stopped reading (a write stalled for {} ms)",
            self.write_timeout.as_millis()
        );
        let user = self.session.identity().map(|i| Arc::clone(&i.user));
        lifecycle::emit(
            &self.state.registry,
            lifecycle::ERROR,
            self.session.conn_id,
            user.as_ref(),
            || serde_json::json!({"error": "the client stopped reading; a write stalled", "code": null}),
        );
        Next::Stop("write timed out")
    }

    /// Buffers `first` and whatever else is queued; the flush comes later.
    async fn write_burst(&mut self, first: Outgoing) -> Next {
        let first = self.dequeued(first);
        let mut next = self.write(first).await;
        while matches!(next, Next::Continue) && self.unflushed < MAX_FRAMES_PER_FLUSH {
            match self.replies_rx.try_recv() {
                Ok(reply) => {
                    let reply = self.dequeued(reply);
                    next = self.write(reply).await;
                }
                Err(_) => break,
            }
        }
        next
    }

    /// Writes a reply that is ready now, after every frame already queued:
    /// a client that gets its `rpc.leave` answer must not then see a
    /// message of that room that was queued before it.
    async fn write_ready(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
        while let Ok(queued) = self.replies_rx.try_recv() {
            let queued = self.dequeued(queued);
            if let next @ (Next::Stop(_) | Next::Close(..) | Next::Shutdown) =
                self.write(queued).await
            {
                return next;
            }
        }
        self.write(reply).await
    }

    /// A frame taken off the queue: its bytes no longer count against the
    /// queue's bound.
    fn dequeued(&self, frame: Outgoing) -> Utf8Bytes {
        self.flow.release(frame.len());
        Arc::unwrap_or_clone(frame)
    }

    /// Drops every frame still queued (the connection is closing), so a
    /// slow consumer's backlog is freed at once rather than when its close
    /// handshake ends.
    fn drop_queued(&mut self) {
        while let Ok(frame) = self.replies_rx.try_recv() {
            self.flow.release(frame.len());
        }
    }

    /// Buffers one frame for the next flush (tungstenite writes through
    /// when its buffer fills, which is where a stalled client shows). A
    /// kick (the queue overflowed meanwhile) ends a stalled write at once.
    async fn write(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
        self.unflushed += 1;
        let feed = timeout(
            self.write_timeout,
            self.ws.feed(Message::Text(reply.into())),
        );
        let outcome = tokio::select! {
            biased;
            outcome = feed => outcome,
            () = self.kick.cancelled() => return Next::Close(CloseCode::from(4008), SLOW_CONSUMER),
        };
        match outcome {
            Ok(Ok(())) => Next::Continue,
            Ok(Err(e)) => {
                tracing::debug!("write failed: {e}");
                Next::Stop("write failed")
            }
            Err(_) => self.stalled(),
        }
    }

    async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Next {
        match incoming {
            Some(Ok(Message::Text(text))) => self.on_text(text).await,
            Some(Ok(Message::Binary(_))) => {
                let error = RpcError::new(
                    ErrorCode::InvalidRequest,
                    "invalid request: send JSON-RPC as text frames, not binary",
                );
                self.write_ready(protocol::reply_error(None, &error)).await
            }
            Some(Ok(Message::Close(_))) => {
                // Keep polling so tungstenite can send the close reply.
                let grace = self.state.config.shutdown_grace();
                let _ = timeout(grace, async {
                    while let Some(Ok(_)) = self.ws.next().await {}
                })
                .await;
                Next::Stop("closed by the client")
            }
            Some(Ok(_)) => Next::Continue, // ping/pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(e))) => {
                tracing::info!("closing: {e}");
                Next::Close(CloseCode::Size, "message too large")
            }
            Some(Err(WsError::Utf8(e))) => {
                tracing::info!("closing: a text frame is not valid UTF-8 ({e})");
                Next::Close(CloseCode::Invalid, "text frame is not valid UTF-8")
            }
            Some(Err(WsError::Protocol(e))) if is_peer_violation(&e) => {
                tracing::info!("closing: WebSocket protocol error: {e}");
                Next::Close(CloseCode::Protocol, "WebSocket protocol error")
            }
            Some(Err(e)) => {
                tracing::debug!("read failed: {e}");
                Next::Stop("read failed")
            }
            None => Next::Stop("connection ended"),
        }
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Next {
        // Both views share one buffer, so ids and params are sliced from it.
        let frame: Bytes = text.clone().into();
        let text = text.as_str();
        match protocol::parse_frame(text, self.state.config.max_batch) {
            Frame::Refused(error) => self.write_ready(protocol::reply_error(None, &error)).await,
            Frame::Single(Err(refusal)) => {
                self.write_ready(protocol::reply_error(refusal.id.as_deref(), &refusal.error))
                    .await
            }
            Frame::Single(Ok(envelope)) => {
                match dispatch(&self.state, &mut self.session, &envelope, &frame, text).await {
                    Dispatched::Ready(Some(reply)) => self.write_ready(reply).await,
                    Dispatched::Ready(None) => Next::Continue,
                    Dispatched::Running(call) => {
                        self.spawn_reply(call.map(|reply| reply.into_iter().collect()))
                    }
                }
            }
            // Boxed: batches are rare, and their state would otherwise
            // make every connection's task larger.
            Frame::Batch(items) => Box::pin(self.on_batch(items, &frame, text)).await,
        }
    }

    /// Dispatches a batch's calls in order and answers with one array.
    async fn on_batch(
        &mut self,
        items: Vec<Result<Envelope<'_>, Refusal>>,
        frame: &Bytes,
        text: &str,
    ) -> Next {
        let mut answers = Vec::with_capacity(items.len());
        let mut all_ready = true;
        let mut signed_in_here = false;
        for item in items {
            let answer = match item {
                Err(refusal) => Dispatched::Ready(Some(protocol::reply_error(
                    refusal.id.as_deref(),
                    &refusal.error,
                ))),
                // One sign-in per batch: each may wait on an auth
                // plugin, and the connection reads nothing meanwhile.
                Ok(envelope) if envelope.method == "rpc.auth" && signed_in_here => {
                    let error = RpcError::new(
                        ErrorCode::InvalidRequest,
                        "invalid request: at most one rpc.auth per batch",
                    );
                    let id = envelope.id.map(|id| id.get().as_bytes());
                    Dispatched::Ready(
                        envelope
                            .id
                            .is_some()
                            .then(|| protocol::reply_error(id, &error)),
                    )
                }
                Ok(envelope) => {
                    signed_in_here |= envelope.method == "rpc.auth";
                    dispatch(&self.state, &mut self.session, &envelope, frame, text).await
                }
            };
            all_ready &= matches!(answer, Dispatched::Ready(_));
            answers.push(answer);
        }
        if all_ready {
            let replies: Vec<String> = answers
                .into_iter()
                .filter_map(|a| match a {
                    Dispatched::Ready(reply) => reply,
                    Dispatched::Running(_) => None,
                })
                .collect();
            return if replies.is_empty() {
                Next::Continue
            } else {
                self.write_ready(protocol::join_batch(&replies)).await
            };
        }
        // Resolve in request order, so the array lists replies as the calls came.
        let pending = answers.into_iter().map(|a| match a {
            Dispatched::Ready(reply) => Either::Left(future::ready(reply)),
            Dispatched::Running(call) => Either::Right(call),
        });
        let batch = future::join_all(pending).map(|replies| {
            let replies: Vec<String> = replies.into_iter().flatten().collect();
            (!replies.is_empty())
                .then(|| protocol::join_batch(&replies))
                .into_iter()
                .collect()
        });
        self.spawn_reply(batch)
    }

    /// Runs a call (or batch) in its own task; its reply, if any, goes
    /// through the queue.
    fn spawn_reply(&mut self, call: impl Future<Output = Vec<String>> + Send + 'static) -> Next {
        let Some(replies) = self.replies_tx.clone() else {
            return Next::Continue;
        };
        let flow = Arc::clone(&self.flow);
        tokio::spawn(
            async move {
                for reply in call.await {
                    // Counted, so pushes see the queue's true size; a reply
                    // itself waits for a free slot rather than overflowing.
                    let len = reply.len();
                    flow.add(len);
                    // The receiver is gone only when the connection has ended.
                    if replies.send(outgoing(reply)).await.is_err() {
                        flow.release(len);
                    }
                }
            }
            .in_current_span(),
        );
        Next::Continue
    }

    /// At shutdown: read nothing more, but answer the calls still running,
    /// until the last one has answered or the grace period ends.
    async fn finish_running_calls(&mut self) {
        // Stop pushes first: rooms and the hub hold senders to the queue,
        // which must end when the last running call has answered.
        // Out of the hub first: a plugin thread that looks the connection
        // up from now on cannot join it to a room it would never leave.
        self.state.hub.unregister(self.session.conn_id);
        self.state
            .rooms
            .leave_all(&self.state.hub, self.session.conn_id);
        self.session.handle = None;
        self.replies_tx = None;
        let deadline = Instant::now() + self.state.config.shutdown_grace();
        loop {
            let next = tokio::select! {
                reply = self.replies_rx.recv() => match reply {
                    Some(reply) => self.write_burst(reply).await,
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            };
            if !matches!(next, Next::Continue) || !matches!(self.flush().await, Next::Continue) {
                return;
            }
        }
        let _ = self.flush().await;
    }

    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        self.replies_rx.close();
        self.drop_queued();
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
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
