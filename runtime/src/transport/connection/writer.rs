//! Writing to the client: frames taken off the outbound queue are fed to
//! the socket in bursts and flushed once; every write has a deadline, and
//! a kick (the queue overflowed) ends a stalled one at once (Close 4008).

use super::batch::{Batch, Held, Incoming, MAX_COPIED_FRAME};
use super::reader::Step;
use super::*;
use futures_util::Sink;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + ReadState> Connection<S> {
    /// With writes buffered: handle whatever is ready at once (queued
    /// frames, answers of calls that ran off the task, frames already
    /// received), and flush as soon as nothing is, or after
    /// [`MAX_FRAMES_PER_FLUSH`] frames. One flush then covers many replies.
    pub(super) async fn step_before_flush(&mut self) -> Next {
        if self.unflushed < MAX_FRAMES_PER_FLUSH {
            if let Ok(first) = self.replies_rx.try_recv() {
                // Writing may wait (a stalled client): the next call reads
                // the clock afresh.
                self.clock = None;
                return Box::pin(self.write_burst(first)).await;
            }
            if let Some(answer) = self.running.answer_now().await {
                self.clock = None;
                return match answer {
                    Some(reply) => match self.write_answer_now(reply) {
                        Ok(next) => next,
                        Err(reply) => Box::pin(self.write_ready(reply)).await,
                    },
                    None => Next::Continue,
                };
            }
            // Frames that came meanwhile are answered in this flush too.
            if let Some(next) = self.handle_received().await {
                return next;
            }
        }
        self.flush().await
    }

    /// Handles the next frame received already, if there is one: from
    /// the batch read ahead, else from the socket, reading ahead the
    /// frames received after it (see [`batch`]). A socket the last read
    /// found empty is not read again (the loop's wait reads it when it is
    /// ready): a push to an idle reader costs no futile read.
    async fn handle_received(&mut self) -> Option<Next> {
        if self.batch.is_none() {
            let incoming = self.frame_now()?;
            let Some(Ok(Message::Text(first))) = incoming else {
                return Some(self.on_frame(incoming).next().await);
            };
            if self.echo || self.ws.get_ref().drained() || first.len() > MAX_COPIED_FRAME {
                return Some(self.on_frame(Some(Ok(Message::Text(first)))).next().await);
            }
            // Copied, and let go of before the next read: tungstenite's
            // read buffer is then free to read into again.
            let mut batch = Batch::starting_with(first.as_str());
            drop(first);
            batch.fill(|| self.frame_now());
            self.batch = Some(batch);
        }
        let mut batch = self.batch.take()?;
        let next = match batch.next() {
            Held::Text(text) => match self.on_read_ahead(text) {
                Step::Done(next) => next,
                Step::Wait(wait) => wait.await,
            },
            Held::After(incoming) => self.on_frame(incoming).next().await,
            Held::Empty => {
                batch.recycle();
                return None;
            }
        };
        if batch.has_more() {
            self.batch = Some(batch);
        } else {
            batch.recycle();
        }
        Some(next)
    }

    /// A frame received already, if any (never reading a socket the last
    /// read found empty).
    fn frame_now(&mut self) -> Option<Incoming> {
        if self.ws.get_ref().drained() {
            return None;
        }
        self.ws.next_now()
    }

    pub(super) async fn flush(&mut self) -> Next {
        self.unflushed = 0;
        // The calls these replies answer are counted before they go out.
        crate::metrics::flush_thread_tally();
        let outcome = bounded(self.ws.flush(), self.write_timeout, &self.kick).await;
        self.after_write(outcome)
    }

    pub(super) fn stalled(&self) -> Next {
        self.state.hub.count_stalled_write();
        conn_info!(
            self,
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

    /// Buffers `first` and whatever else is queued at once, without
    /// awaiting, while the socket's sink takes frames without waiting (as
    /// it does unless a write is stalled); the flush comes later. A frame
    /// the sink would not take now is handed back, for
    /// [`write_burst`](Self::write_burst) to write, waiting as it must.
    pub(super) fn write_burst_now(&mut self, first: Outgoing) -> Result<Next, Outgoing> {
        let mut frame = first;
        loop {
            if !self.sink_ready_now() {
                return Err(frame);
            }
            let text = self.dequeued(frame);
            self.unflushed += 1;
            if let Err(e) = Pin::new(&mut self.ws).start_send(Message::Text(text)) {
                return Ok(self.after_write(Bounded::Done(Err(e))));
            }
            if self.unflushed >= MAX_FRAMES_PER_FLUSH {
                return Ok(Next::Continue);
            }
            match self.replies_rx.try_recv() {
                Ok(next) => frame = next,
                Err(_) => return Ok(Next::Continue),
            }
        }
    }

    /// Writes a reply that is ready now, after every frame already queued:
    /// a client that gets its `rpc.leave` answer must not then see a
    /// message of that room that was queued before it.
    pub(super) async fn write_ready(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
        // An empty queue is seen without taking its lock.
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

    /// A frame taken off the queue (which counted its bytes out), as the
    /// text to write.
    pub(super) fn dequeued(&self, frame: Outgoing) -> Utf8Bytes {
        Arc::unwrap_or_clone(frame)
    }

    /// Drops every frame still queued (the connection is closing), so a
    /// slow consumer's backlog is freed at once rather than when its close
    /// handshake ends.
    pub(super) fn drop_queued(&mut self) {
        while self.replies_rx.try_recv().is_ok() {}
    }

    /// Buffers one frame for the next flush (tungstenite writes through
    /// when its buffer fills, which is where a stalled client shows). A
    /// kick (the queue overflowed meanwhile) ends a stalled write at once.
    pub(super) async fn write(&mut self, reply: impl Into<Utf8Bytes>) -> Next {
        self.write_message(Message::Text(reply.into())).await
    }

    /// Whether the socket's sink takes a frame now, without waiting (it
    /// does unless a write is stalled). A sink that is not ready is then
    /// written through the general path, which waits for it.
    pub(super) fn sink_ready_now(&mut self) -> bool {
        self.ws.ready_now()
    }

    /// Buffers a reply for the next flush, at once: only right after
    /// [`sink_ready_now`](Self::sink_ready_now) said yes, with nothing
    /// written since (a sink that is ready takes one frame without
    /// waiting, whatever its size: a write that would block is kept in
    /// its buffer, and the next poll flushes it).
    pub(super) fn write_now(&mut self, reply: String) -> Next {
        self.unflushed += 1;
        match Pin::new(&mut self.ws).start_send(Message::Text(reply.into())) {
            Ok(()) => Next::Continue,
            Err(e) => self.after_write(Bounded::Done(Err(e))),
        }
    }

    /// Buffers the reply of a call that ran off the task at once, when
    /// nothing is queued before it and the sink takes it without waiting;
    /// else hands it back for [`write_ready`](Self::write_ready).
    pub(super) fn write_answer_now(&mut self, reply: String) -> Result<Next, String> {
        if !self.replies_rx.is_empty() || !self.sink_ready_now() {
            return Err(reply);
        }
        Ok(self.write_now(reply))
    }

    /// [`write`](Self::write) for any message (text or binary).
    pub(super) async fn write_message(&mut self, message: Message) -> Next {
        self.unflushed += 1;
        let feed = self.ws.feed(message);
        let outcome = bounded(feed, self.write_timeout, &self.kick).await;
        self.after_write(outcome)
    }

    /// What a write's outcome means for the connection.
    fn after_write(&self, outcome: Bounded) -> Next {
        match outcome {
            Bounded::Done(Ok(())) => Next::Continue,
            Bounded::Done(Err(e)) => {
                tracing::debug!("write failed: {e}");
                Next::Stop("write failed")
            }
            Bounded::TimedOut => self.stalled(),
            Bounded::Kicked => Next::Close(CloseCode::from(4008), SLOW_CONSUMER),
        }
    }

    /// Keeps a call (or batch) answered off the task until it ends; its
    /// reply, if any, is written then.
    pub(super) fn run_off_task(&mut self, call: running::Call) -> Next {
        self.running.push(call);
        Next::Continue
    }

    /// Starts a call on the action pool; its reply, if any, is written
    /// when it ends.
    pub(super) fn start_pool_call(&mut self, call: PoolCall) -> Next {
        self.running.start(call);
        Next::Continue
    }
}

/// How a write-side operation ended.
enum Bounded {
    /// It finished (well or not).
    Done(Result<(), WsError>),
    /// It stalled past the write deadline.
    TimedOut,
    /// The connection was kicked (its queue overflowed) while it stalled.
    Kicked,
}

/// Runs a write-side operation (a feed or a flush). Usually it finishes on
/// its first poll (the bytes fit the buffer or the socket), and then
/// nothing else is set up: no clock read, no deadline, no kick to watch.
/// Only an operation that has to wait gets the write deadline, and is
/// ended early by a kick.
async fn bounded<F>(operation: F, deadline: Duration, kick: &CancellationToken) -> Bounded
where
    F: Future<Output = Result<(), WsError>>,
{
    let mut operation = std::pin::pin!(operation);
    let first =
        std::future::poll_fn(|cx| std::task::Poll::Ready(operation.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(result) = first {
        return Bounded::Done(result);
    }
    // Boxed: the waiting machinery (a timer, the kick's waiter) is rare,
    // and kept out of the state every idle connection's task carries.
    Box::pin(async move {
        tokio::select! {
            biased;
            outcome = timeout(deadline, operation) => match outcome {
                Ok(result) => Bounded::Done(result),
                Err(_) => Bounded::TimedOut,
            },
            () = kick.cancelled() => Bounded::Kicked,
        }
    })
    .await
}
