//! [`RedisBroker`] as the server's [`Broker`]: each operation, by the
//! cluster's means.

use super::*;
use crate::auth::revocations::Revocation;
use crate::rooms::hub::CloseRequest;
use crate::rooms::{RoomCount, RoomHistory};

impl Broker for RedisBroker {
    fn rule(&self, room: &str) -> Arc<RoomRule> {
        Arc::clone(self.inner.rules.rule(room))
    }

    fn check_access(
        &self,
        room: &str,
        identity: Option<&Identity>,
    ) -> Result<Arc<RoomRule>, RpcError> {
        self.inner.rules.check_access(room, identity)
    }

    fn join<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        conn: &'a ConnHandle,
        since: Option<Since<'a>>,
    ) -> BoxFuture<'a, Result<Joined, RpcError>> {
        Box::pin(self.inner.join(room, rule, conn, since))
    }

    fn leave<'a>(&'a self, room: &'a str, conn_id: u64) -> BoxFuture<'a, bool> {
        Box::pin(self.inner.leave(room, conn_id))
    }

    fn leave_all(&self, conn_id: u64) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let rooms = self.inner.local.take_memberships(conn_id);
            for room in &rooms {
                self.inner.leave(room, conn_id).await;
            }
            rooms
        })
    }

    fn publish<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        data: &'a str,
    ) -> BoxFuture<'a, Result<Published, RpcError>> {
        Box::pin(self.inner.publish(room, rule, data))
    }

    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Presence>> {
        Box::pin(self.inner.presence(room))
    }

    fn is_member(&self, room: &str, conn_id: u64) -> bool {
        self.inner.local.is_member(room, conn_id)
    }

    fn rooms_of(&self, conn_id: u64) -> Vec<String> {
        self.inner.local.rooms_of(conn_id)
    }

    fn room_count_of(&self, conn_id: u64) -> usize {
        self.inner.local.count_of(conn_id)
    }

    fn send_to_conn(&self, conn_id: u64, frame: Outgoing) -> bool {
        let node = conn_id >> 32;
        if node == self.inner.number {
            return self.inner.hub.send_to_conn(conn_id, frame);
        }
        self.inner.forward(
            keys::node_channel(node),
            wire::to_conn(conn_id, frame.as_str()),
        );
        true
    }

    fn send_to_user(&self, user: &str, frame: &Outgoing) -> usize {
        self.inner.forward(
            keys::EVERY_NODE.to_owned(),
            wire::to_user(self.inner.number, user, frame.as_str()),
        );
        self.inner.hub.send_to_user(user, frame)
    }

    fn broadcast(&self, frame: &Outgoing, except: &[u64], signed_in_only: bool) -> usize {
        self.inner.forward(
            keys::EVERY_NODE.to_owned(),
            wire::broadcast(self.inner.number, signed_in_only, except, frame.as_str()),
        );
        self.inner.hub.broadcast(frame, except, signed_in_only)
    }

    fn usage(&self) -> RoomsUsage {
        // Rooms with members on this node, against the cluster's bound
        // (the rooms themselves live in Redis).
        let mut usage = self.inner.rules.usage();
        usage.rooms = self.inner.local.room_names().len();
        usage.max_rooms = self.inner.max_rooms;
        usage
    }

    fn sweep(&self) -> usize {
        0
    }

    fn waits(&self) -> bool {
        true
    }

    fn cluster_status(&self) -> Option<serde_json::Value> {
        Some(self.status())
    }

    fn ask_node(
        &self,
        conn_id: u64,
        request: NodeRequest,
        timeout: Duration,
    ) -> Option<BoxFuture<'_, NodeAnswer>> {
        if conn_id >> 32 == self.inner.number || conn_id >> 32 == 0 {
            return None;
        }
        Some(Box::pin(self.inner.ask(conn_id, request, timeout)))
    }

    fn set_request_handler(&self, handler: Arc<dyn NodeRequestHandler>) {
        let _ = self.inner.handler.set(Arc::clone(&handler));
        // Revocations made before this node started.
        let inner = Arc::clone(&self.inner);
        self.inner.runtime.spawn(async move {
            for revocation in inner.kept_revocations().await {
                let handler = Arc::clone(&handler);
                let _ = tokio::task::spawn_blocking(move || {
                    handler.obey(Order::Revoke(revocation));
                })
                .await;
            }
        });
    }

    fn history<'a>(
        &'a self,
        room: &'a str,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<RoomHistory, RpcError>> {
        Box::pin(self.inner.history(room, since, limit))
    }

    fn list_rooms<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RoomCount>, RpcError>> {
        Box::pin(self.inner.list_rooms(prefix, limit))
    }

    fn disconnect_conn<'a>(&'a self, conn_id: u64, close: &'a CloseRequest) -> BoxFuture<'a, bool> {
        let request = NodeRequest::Close {
            code: close.code,
            reason: close.reason.clone(),
        };
        match self.ask_node(conn_id, request, REDIS_TIMEOUT) {
            Some(asked) => Box::pin(async move { asked.await == NodeAnswer::Done(true) }),
            None => Box::pin(std::future::ready(self.inner.hub.close(conn_id, close))),
        }
    }

    fn disconnect_user(&self, user: &str, close: &CloseRequest) -> usize {
        self.inner.give_order(&Order::DisconnectUser {
            user: user.to_owned(),
            close: close.clone(),
        });
        self.inner.hub.close_user(user, close)
    }

    fn share_revocation(&self, revocation: &Revocation) {
        self.inner.keep_revocation(revocation);
        self.inner.give_order(&Order::Revoke(revocation.clone()));
    }

    fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn membership_count(&self) -> usize {
        self.inner.local.membership_count()
    }
}
