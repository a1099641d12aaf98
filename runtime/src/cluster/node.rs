//! What travels between nodes besides room messages: pushes forwarded to
//! other nodes (bounded), requests about another node's connections and
//! their answers, and everything heard on the pub/sub link.

use super::*;

/// Counts a push to other nodes as sent (or failed) when dropped.
struct ForwardDone(Arc<Inner>);

impl Drop for ForwardDone {
    fn drop(&mut self) {
        self.0
            .forwards
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Inner {
    /// Publishes `payload` on `channel` without waiting (pushes).
    pub(super) fn forward(self: &Arc<Self>, channel: String, payload: String) {
        use std::sync::atomic::Ordering;
        if self.forwards.fetch_add(1, Ordering::Relaxed) >= MAX_FORWARDS {
            self.forwards.fetch_sub(1, Ordering::Relaxed);
            self.forwards_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                channel,
                "cluster: a push to other nodes was dropped: Redis is not keeping up"
            );
            return;
        }
        let inner = Arc::clone(self);
        self.runtime.spawn(async move {
            let _done = ForwardDone(Arc::clone(&inner));
            let mut commands = inner.commands.clone();
            let sent: Result<(), redis::RedisError> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async(&mut commands)
                .await;
            if let Err(e) = sent {
                inner.link.health.failed(&e.to_string());
                tracing::warn!(channel, "cluster: a push to other nodes was not sent: {e}");
            }
        });
    }
}

/// Publishes `payload` on `channel` with `commands`; logs a failure.
async fn publish_to(mut commands: ConnectionManager, channel: String, payload: String) -> bool {
    let sent: Result<(), redis::RedisError> = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(payload)
        .query_async(&mut commands)
        .await;
    if let Err(e) = &sent {
        tracing::warn!(
            channel,
            "cluster: a message to other nodes was not sent: {e}"
        );
    }
    sent.is_ok()
}

impl Inner {
    /// A request from another node about one of this node's connections,
    /// or the answer to one of this node's requests.
    pub(super) fn on_request(&self, heard: requests::Heard) {
        match heard {
            requests::Heard::Answer { id, answer } => self.pending.answer(id, answer),
            requests::Heard::Request {
                id,
                origin,
                conn,
                request,
            } => {
                let Some(handler) = self.handler.get().cloned() else {
                    return;
                };
                let commands = self.commands.clone();
                self.runtime.spawn(async move {
                    let answer = tokio::task::spawn_blocking(move || handler.handle(conn, request))
                        .await
                        .unwrap_or(NodeAnswer::Gone);
                    publish_to(
                        commands,
                        keys::node_channel(origin),
                        requests::answer(id, &answer),
                    )
                    .await;
                });
            }
        }
    }

    /// Asks the node holding `conn_id` to do `request`, and waits for its
    /// answer for at most `timeout`.
    pub(super) async fn ask(
        &self,
        conn_id: u64,
        request: NodeRequest,
        timeout: Duration,
    ) -> NodeAnswer {
        let (id, answer) = self.pending.open();
        let payload = requests::request(id, self.number, conn_id, &request);
        let sent = publish_to(
            self.commands.clone(),
            keys::node_channel(conn_id >> 32),
            payload,
        )
        .await;
        if !sent {
            self.pending.forget(id);
            return NodeAnswer::Gone;
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            _ => {
                self.pending.forget(id);
                match request {
                    NodeRequest::CallClient { .. } => NodeAnswer::TimedOut,
                    _ => NodeAnswer::Gone,
                }
            }
        }
    }
}

impl Listener for Inner {
    fn heard(&self, channel: &str, payload: &str) {
        if let Some((origin, order)) = admin::parse(payload) {
            if origin != self.number
                && let Some(handler) = self.handler.get().cloned()
            {
                self.runtime.spawn_blocking(move || handler.obey(order));
            }
            return;
        }
        if let Some(heard) = requests::parse(payload) {
            self.on_request(heard);
            return;
        }
        let Some(heard) = wire::parse(payload) else {
            tracing::debug!(channel, "cluster: an unknown message was ignored");
            return;
        };
        match heard {
            wire::Heard::Message {
                epoch,
                offset,
                data,
            } => {
                if let Some(room) = keys::room_of_channel(channel) {
                    let frame = crate::rooms::message_frame(room, offset, data);
                    self.local.deliver(&self.hub, room, epoch, offset, &frame);
                }
            }
            wire::Heard::Event { except, frame } => {
                if let Some(room) = keys::room_of_channel(channel) {
                    self.local
                        .push_event(&self.hub, room, &outgoing(frame.to_owned()), except);
                }
            }
            wire::Heard::ToConn { conn, frame } => {
                self.hub.send_to_conn(conn, outgoing(frame.to_owned()));
            }
            wire::Heard::ToUser {
                origin,
                user,
                frame,
            } => {
                if origin != self.number {
                    self.hub.send_to_user(&user, &outgoing(frame.to_owned()));
                }
            }
            wire::Heard::Broadcast {
                origin,
                signed_in_only,
                except,
                frame,
            } if origin != self.number => {
                self.hub
                    .broadcast(&outgoing(frame.to_owned()), &except, signed_in_only);
            }
            wire::Heard::Broadcast { .. } => {}
        }
    }

    fn reconnected(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.catch_up())
    }
}
