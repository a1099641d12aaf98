//! Writing to the client: frames taken off the outbound queue are fed to
//! the socket in bursts and flushed once; every write has a deadline, and
//! a kick (the queue overflowed) ends a stalled one at once (Close 4008).
//! Replies of running calls come back through the same queue.

use super::*;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// With writes buffered: handle whatever is ready at once (queued
    /// replies, frames already received), and flush as soon as nothing is,
    /// or after [`MAX_FRAMES_PER_FLUSH`] frames. One flush then covers many
    /// replies.
    pub(super) async fn step_before_flush(&mut self) -> Next {
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

    pub(super) async fn flush(&mut self) -> Next {
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

    pub(super) fn stalled(&self) -> Next {
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
    pub(super) async fn write_burst(&mut self, first: Outgoing) -> Next {
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
    pub(super) async fn write_ready(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
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
    pub(super) fn dequeued(&self, frame: Outgoing) -> Utf8Bytes {
        self.flow.release(frame.len());
        Arc::unwrap_or_clone(frame)
    }

    /// Drops every frame still queued (the connection is closing), so a
    /// slow consumer's backlog is freed at once rather than when its close
    /// handshake ends.
    pub(super) fn drop_queued(&mut self) {
        while let Ok(frame) = self.replies_rx.try_recv() {
            self.flow.release(frame.len());
        }
    }

    /// Buffers one frame for the next flush (tungstenite writes through
    /// when its buffer fills, which is where a stalled client shows). A
    /// kick (the queue overflowed meanwhile) ends a stalled write at once.
    pub(super) async fn write(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
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

    /// Runs a call (or batch) in its own task; its reply, if any, goes
    /// through the queue.
    pub(super) fn spawn_reply(
        &mut self,
        call: impl Future<Output = Vec<String>> + Send + 'static,
    ) -> Next {
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
}
