//! Reading from the client: each frame parsed as JSON-RPC and dispatched
//! (batches in order, one reply array), and protocol errors answered with
//! their close codes (1002, 1007, 1009).

use super::*;

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

impl<S: AsyncRead + AsyncWrite + Unpin + Send + ReadState> Connection<S> {
    pub(super) async fn on_incoming(&mut self, incoming: Option<Result<Message, WsError>>) -> Next {
        if matches!(incoming, Some(Ok(_))) {
            // Anything from the peer (a pong included) says it is there.
            self.heard = true;
        }
        match incoming {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) if self.echo => {
                self.write_message(message).await
            }
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
                let _ = Box::pin(timeout(grace, async {
                    while let Some(Ok(_)) = self.ws.next().await {}
                }))
                .await;
                Next::Stop(super::CLIENT_CLOSED)
            }
            Some(Ok(_)) => Next::Continue, // ping/pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(e))) => {
                conn_info!(self, "closing: {e}");
                Next::Close(CloseCode::Size, "message too large")
            }
            Some(Err(WsError::Utf8(e))) => {
                conn_info!(self, "closing: a text frame is not valid UTF-8 ({e})");
                Next::Close(CloseCode::Invalid, "text frame is not valid UTF-8")
            }
            Some(Err(WsError::Protocol(e))) if is_peer_violation(&e) => {
                conn_info!(self, "closing: WebSocket protocol error: {e}");
                Next::Close(CloseCode::Protocol, "WebSocket protocol error")
            }
            Some(Err(e)) => {
                tracing::debug!("read failed: {e}");
                Next::Stop("read failed")
            }
            None => Next::Stop("connection ended"),
        }
    }

    /// A frame from the peer: a text frame through [`Self::text_now`]
    /// when it can be, done here; everything else (and what it hands
    /// back) on the general path, which may wait. That is boxed: handling
    /// a frame takes more state than the rest of the loop, and inline it
    /// would make every idle connection's task that much larger.
    pub(super) fn on_frame(&mut self, incoming: Option<Result<Message, WsError>>) -> Step<'_> {
        match incoming {
            Some(Ok(Message::Text(text))) if !self.echo => {
                self.heard = true;
                let now = self.text_now(text.as_str(), FrameSource::Text(&text));
                self.step_after(now, || text)
            }
            other => {
                self.clock = None;
                Step::Wait(Box::pin(self.on_incoming(other)))
            }
        }
    }

    /// A text frame read ahead (see [`super::batch`]): [`Self::on_frame`]
    /// for a frame whose text is in the batch's buffer. What the general
    /// path takes gets a copy of its own.
    pub(super) fn on_read_ahead(&mut self, body: &str) -> Step<'_> {
        self.heard = true;
        let now = self.text_now(body, FrameSource::Copied);
        self.step_after(now, || Utf8Bytes::from(body))
    }

    /// What the loop does after [`Self::text_now`]: done, or the general
    /// path, which takes the frame's text from `text`.
    fn step_after(&mut self, now: Now, text: impl FnOnce() -> Utf8Bytes) -> Step<'_> {
        if !matches!(now, Now::Done(_)) {
            // Waits may follow: the next call reads the clock afresh.
            self.clock = None;
        }
        match now {
            Now::Done(next) => Step::Done(next),
            Now::Reply(reply) => Step::Wait(Box::pin(self.reply_after_queued(reply))),
            Now::OverRate(error) => {
                let text = text();
                Step::Wait(Box::pin(async move {
                    self.refuse_for_rate(&text, &error).await
                }))
            }
            Now::Later => Step::Wait(Box::pin(self.on_text(text()))),
        }
    }

    /// Handles a text frame at once, when it holds one call to an action
    /// and the socket can take a frame now: the common case, with nothing
    /// to wait for, so it takes no boxed future (an allocation and a copy
    /// of its state per frame). It does what [`Self::on_text`] does, in
    /// the same order; a frame it leaves to the general path is left
    /// before anything is taken from the connection's allowances.
    fn text_now(&mut self, body: &str, frame: FrameSource<'_>) -> Now {
        if !self.sink_ready_now() {
            return Now::Later;
        }
        let Frame::Single(Ok(envelope)) = protocol::parse_frame(body, self.state.config.max_batch)
        else {
            return Now::Later;
        };
        if !is_action_call(&envelope) {
            return Now::Later;
        }
        if let Err(error) = self.take_message() {
            if self.session.rates.exhausted() {
                return Now::Done(self.over_rate());
            }
            return Now::OverRate(error);
        }
        let mut clock = self.clock.unwrap_or_else(std::time::Instant::now);
        let Some(dispatched) =
            dispatch_now(&self.state, &mut self.session, &envelope, frame, &mut clock)
        else {
            // Checked above: only actions come this way.
            return Now::Later;
        };
        self.clock = Some(clock);
        let next = match dispatched {
            Dispatched::Ready(Some(reply)) if !self.replies_rx.is_empty() => {
                return Now::Reply(reply);
            }
            Dispatched::Ready(Some(reply)) => self.write_now(reply),
            Dispatched::Ready(None) => Next::Continue,
            Dispatched::Running(call) => self.run_off_task(call),
            Dispatched::Pool(call) => self.start_pool_call(call),
        };
        Now::Done(self.after_frame(next))
    }

    /// A reply that must wait for the frames queued before it; then the
    /// rate check every frame ends with.
    async fn reply_after_queued(&mut self, reply: String) -> Next {
        let next = self.write_ready(reply).await;
        self.after_frame(next)
    }

    /// What the loop does after a frame: close a connection that kept
    /// exceeding its rate limits, else `next`.
    fn after_frame(&self, next: Next) -> Next {
        if self.session.rates.exhausted() {
            return self.over_rate();
        }
        next
    }

    pub(super) async fn on_text(&mut self, text: Utf8Bytes) -> Next {
        // Both views share one buffer, so ids and params are sliced from it.
        let frame: Bytes = text.clone().into();
        let text = text.as_str();
        if let Err(error) = self.take_message() {
            if self.session.rates.exhausted() {
                return self.over_rate();
            }
            return self.refuse_for_rate(text, &error).await;
        }
        let next = self.dispatch_frame(&frame, text).await;
        self.after_frame(next)
    }

    /// A connection that kept exceeding its rate limits: closed with 1008.
    fn over_rate(&self) -> Next {
        conn_info!(self, "closing: over the rate limits, again and again");
        Next::Close(CloseCode::Policy, "rate limit exceeded repeatedly")
    }

    /// Takes one message from the connection's and its user's allowances.
    fn take_message(&mut self) -> Result<(), RpcError> {
        if !self.session.rates.limits_messages() && !self.state.user_rates.enabled() {
            // No clock read when no limit is on.
            return Ok(());
        }
        let now = std::time::Instant::now();
        let config = &self.state.config;
        self.session.rates.take_message(config, now)?;
        if self.state.user_rates.enabled()
            && let Some(identity) = self.session.identity()
            && let Err(message) = self.state.user_rates.take(&identity.user, now)
        {
            return Err(self.session.rates.refused(now, "user", message));
        }
        Ok(())
    }

    /// Parses a frame and dispatches its calls.
    async fn dispatch_frame(&mut self, frame: &Bytes, text: &str) -> Next {
        match protocol::parse_frame(text, self.state.config.max_batch) {
            Frame::Refused(error) => self.write_ready(protocol::reply_error(None, &error)).await,
            Frame::Single(Err(refusal)) => {
                self.write_ready(protocol::reply_error(refusal.id.as_deref(), &refusal.error))
                    .await
            }
            Frame::Single(Ok(envelope)) => {
                match dispatch(&self.state, &mut self.session, &envelope, frame, text).await {
                    Dispatched::Ready(Some(reply)) => self.write_ready(reply).await,
                    Dispatched::Ready(None) => Next::Continue,
                    Dispatched::Running(call) => self.run_off_task(call),
                    Dispatched::Pool(call) => self.start_pool_call(call),
                }
            }
            // Boxed: batches are rare, and their state would otherwise
            // make every connection's task larger.
            Frame::Batch(items) => Box::pin(self.on_batch(items, frame, text)).await,
        }
    }

    /// Refuses a message over the rate (-32004), with its id when it is a
    /// single request; nothing reaches an action.
    pub(super) async fn refuse_for_rate(&mut self, text: &str, error: &RpcError) -> Next {
        match protocol::parse_frame(text, self.state.config.max_batch) {
            Frame::Single(Ok(envelope)) => match envelope.id {
                Some(id) => {
                    let reply = protocol::reply_error(Some(id), error);
                    self.write_ready(reply).await
                }
                None => Next::Continue,
            },
            _ => self.write_ready(protocol::reply_error(None, error)).await,
        }
    }

    /// Dispatches a batch's calls in order and answers with one array.
    pub(super) async fn on_batch(
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
                    let id = envelope.id;
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
                    Dispatched::Running(_) | Dispatched::Pool(_) => None,
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
            Dispatched::Pool(call) => Either::Right(call.into_future()),
        });
        let batch = future::join_all(pending).map(|replies| {
            let replies: Vec<String> = replies.into_iter().flatten().collect();
            (!replies.is_empty()).then(|| protocol::join_batch(&replies))
        });
        self.run_off_task(Box::pin(batch))
    }
}

/// What [`Connection::text_now`] did with a text frame.
pub(super) enum Now {
    /// Handled: what the loop does next.
    Done(Next),
    /// Answered, but frames queued before the reply go first.
    Reply(String),
    /// Over the connection's (or its user's) message rate: refused on the
    /// general path.
    OverRate(RpcError),
    /// Not taken: the general path handles it.
    Later,
}

/// What the loop does with a frame: done already, or a wait.
pub(super) enum Step<'a> {
    /// Handled; what the loop does next.
    Done(Next),
    /// The general path, to be awaited.
    Wait(Pin<Box<dyn Future<Output = Next> + Send + 'a>>),
}

impl Step<'_> {
    /// What the loop does next, once any wait is over.
    pub(super) async fn next(self) -> Next {
        match self {
            Step::Done(next) => next,
            Step::Wait(wait) => wait.await,
        }
    }
}
