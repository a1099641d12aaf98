//! One WebSocket connection: a single task that reads frames, dispatches
//! the calls in them, and writes replies in bursts (feed every queued
//! frame, then flush once).
//!
//! Replies of running actions come back through a bounded queue, in
//! whatever order the actions finish. On shutdown the connection is sent a
//! Close 1001 and given the grace period to answer it.

use crate::dispatch::{Dispatched, dispatch};
use crate::protocol::{self, Frame};
use crate::rpc_error::{ErrorCode, RpcError};
use crate::session::Session;
use crate::state::ServerState;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most frames written before a flush is forced.
const MAX_FRAMES_PER_FLUSH: usize = 256;

/// Serves one upgraded connection until it closes or the server stops.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    state: Arc<ServerState>,
    session: Session,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let span = tracing::info_span!(
        "conn",
        id = session.conn_id,
        user = session.identity().map(|i| &*i.user)
    );
    Connection::new(ws, state, session)
        .run(shutdown)
        .instrument(span)
        .await
}

struct Connection<S> {
    ws: WebSocketStream<S>,
    state: Arc<ServerState>,
    session: Session,
    replies_tx: mpsc::Sender<String>,
    replies_rx: mpsc::Receiver<String>,
    /// Frames written since the last flush.
    unflushed: usize,
}

/// What the read side asks the loop to do next.
enum Next {
    Continue,
    Close(CloseCode, &'static str),
    Stop,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(ws: WebSocketStream<S>, state: Arc<ServerState>, session: Session) -> Self {
        let (replies_tx, replies_rx) = mpsc::channel(state.config.outbound_queue);
        Connection {
            ws,
            state,
            session,
            replies_tx,
            replies_rx,
            unflushed: 0,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!("connected");
        let why = loop {
            let next = if self.unflushed > 0 {
                self.step_before_flush().await
            } else {
                tokio::select! {
                    biased;
                    Some(first) = self.replies_rx.recv() => self.write_burst(first).await,
                    incoming = self.ws.next() => self.on_incoming(incoming).await,
                    () = shutdown.cancelled() => Next::Close(CloseCode::Away, "the server is shutting down"),
                }
            };
            match next {
                Next::Continue => {}
                Next::Close(code, reason) => {
                    self.close(code, reason).await;
                    break reason;
                }
                Next::Stop => break "closed",
            }
        };
        tracing::debug!(why, "disconnected");
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
        self.unflushed = 0;
        match self.ws.flush().await {
            Ok(()) => Next::Continue,
            Err(e) => {
                tracing::debug!("write failed: {e}");
                Next::Stop
            }
        }
    }

    /// Buffers `first` and whatever else is queued; the flush comes later.
    async fn write_burst(&mut self, first: String) -> Next {
        let mut next = self.write(first).await;
        while matches!(next, Next::Continue) && self.unflushed < MAX_FRAMES_PER_FLUSH {
            match self.replies_rx.try_recv() {
                Ok(reply) => next = self.write(reply).await,
                Err(_) => break,
            }
        }
        next
    }

    /// Buffers one reply for the next flush (tungstenite writes through
    /// when its buffer fills).
    async fn write(&mut self, reply: String) -> Next {
        self.unflushed += 1;
        match self.ws.feed(Message::text(reply)).await {
            Ok(()) => Next::Continue,
            Err(e) => {
                tracing::debug!("write failed: {e}");
                Next::Stop
            }
        }
    }

    async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Next {
        match incoming {
            Some(Ok(Message::Text(text))) => {
                let frame: Bytes = text.into();
                self.on_text(frame).await
            }
            Some(Ok(Message::Binary(_))) => {
                let error = RpcError::new(
                    ErrorCode::InvalidRequest,
                    "invalid request: send JSON-RPC as text frames, not binary",
                );
                self.write(protocol::reply_error(None, &error)).await
            }
            Some(Ok(Message::Close(_))) => self.drain_after_close().await,
            Some(Ok(_)) => Next::Continue, // ping/pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(e))) => {
                tracing::info!("closing: {e}");
                Next::Close(CloseCode::Size, "message too large")
            }
            Some(Err(e)) => {
                tracing::debug!("read failed: {e}");
                Next::Stop
            }
            None => Next::Stop,
        }
    }

    /// After the client's Close, keep polling so tungstenite can send the
    /// close reply, until the stream ends.
    async fn drain_after_close(&mut self) -> Next {
        while let Some(Ok(_)) = self.ws.next().await {}
        Next::Stop
    }

    async fn on_text(&mut self, frame: Bytes) -> Next {
        let Ok(text) = std::str::from_utf8(&frame) else {
            // tungstenite validates text frames; kept total for safety.
            return Next::Close(CloseCode::Invalid, "text frame is not UTF-8");
        };
        match protocol::parse_frame(text, self.state.config.max_batch) {
            Frame::Refused(error) => self.write(protocol::reply_error(None, &error)).await,
            Frame::Single(Err(refusal)) => {
                self.write(protocol::reply_error(refusal.id.as_deref(), &refusal.error))
                    .await
            }
            Frame::Single(Ok(envelope)) => {
                match dispatch(&self.state, &mut self.session, &envelope, &frame, text) {
                    Dispatched::Ready(Some(reply)) => self.write(reply).await,
                    Dispatched::Ready(None) => Next::Continue,
                    Dispatched::Running(call) => {
                        let replies = self.replies_tx.clone();
                        tokio::spawn(
                            async move {
                                if let Some(reply) = call.await {
                                    // The receiver is gone only when the connection has ended.
                                    let _ = replies.send(reply).await;
                                }
                            }
                            .in_current_span(),
                        );
                        Next::Continue
                    }
                }
            }
            Frame::Batch(items) => {
                let mut ready = Vec::new();
                let mut running = Vec::new();
                for item in items {
                    match item {
                        Err(refusal) => {
                            ready.push(protocol::reply_error(refusal.id.as_deref(), &refusal.error))
                        }
                        Ok(envelope) => {
                            match dispatch(&self.state, &mut self.session, &envelope, &frame, text)
                            {
                                Dispatched::Ready(reply) => ready.extend(reply),
                                Dispatched::Running(call) => running.push(call),
                            }
                        }
                    }
                }
                if running.is_empty() {
                    return if ready.is_empty() {
                        Next::Continue
                    } else {
                        self.write(protocol::join_batch(&ready)).await
                    };
                }
                let replies = self.replies_tx.clone();
                tokio::spawn(
                    async move {
                        ready.extend(
                            futures_util::future::join_all(running)
                                .await
                                .into_iter()
                                .flatten(),
                        );
                        if !ready.is_empty() {
                            let _ = replies.send(protocol::join_batch(&ready)).await;
                        }
                    }
                    .in_current_span(),
                );
                Next::Continue
            }
        }
    }

    async fn close(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.ws.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let grace = self.state.config.shutdown_grace();
        let _ = tokio::time::timeout(grace, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
