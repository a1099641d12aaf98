//! [`Broker`]: everything the server asks of rooms and pushes, as one
//! interface: joining (with the replay of missed history), leaving,
//! publishing, presence, and pushes to one connection, to a user's
//! connections or to everyone. [`LocalBroker`], this process's [`Rooms`]
//! and [`Hub`], is its in-memory implementation; a cluster broker (rooms
//! shared through Redis) is the second.
//!
//! What crosses nodes in a cluster (joins, leaves, publishes, presence)
//! answers with a future: a cluster broker waits for Redis there, while
//! the in-memory one is ready at once. Pushes return how many connections
//! of this server they were queued for; a cluster broker forwards them to
//! the other nodes without waiting. Which rooms a connection is in is
//! always known here, where the connection is.

use super::hub::CloseRequest;
use super::hub::{ConnHandle, Hub, Outgoing};
use super::policy::RoomRule;
use super::{Joined, Presence, RoomCount, RoomHistory, Rooms, RoomsUsage};
use crate::auth::Identity;
use crate::auth::revocations::Revocation;
use crate::rpc::error::RpcError;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// A publish that went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's offset in its room.
    pub offset: u64,
    /// Connections of this server it was queued for.
    pub queued_here: usize,
}

/// Where a joining client left off: the last offset it saw, and the
/// epoch it saw it in.
#[derive(Debug, Clone, Copy)]
pub struct Since<'a> {
    /// The last offset the client saw.
    pub offset: u64,
    /// The room's epoch when it saw it.
    pub epoch: Option<&'a str>,
}

/// Rooms and pushes, for one server or a cluster of them.
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// The rule governing `room` (the `[[rooms]]` rule its name matches).
    fn rule(&self, room: &str) -> Arc<RoomRule>;

    /// Checks that `identity` may join (or see the presence of) `room`,
    /// and returns the room's rule.
    fn check_access(
        &self,
        room: &str,
        identity: Option<&Identity>,
    ) -> Result<Arc<RoomRule>, RpcError>;

    /// Adds a connection of this server to `room` (access already
    /// checked). With `since`, the messages it missed are queued before
    /// any live one.
    fn join<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        conn: &'a ConnHandle,
        since: Option<Since<'a>>,
    ) -> BoxFuture<'a, Result<Joined, RpcError>>;

    /// Removes a connection from `room`; `false` if it was not a member.
    fn leave<'a>(&'a self, room: &'a str, conn_id: u64) -> BoxFuture<'a, bool>;

    /// Removes a connection from every room; their names, sorted.
    fn leave_all(&self, conn_id: u64) -> BoxFuture<'_, Vec<String>>;

    /// Publishes raw JSON `data` to `room` (created if need be, within
    /// the bounds): gives it the next offset, keeps it in the history and
    /// queues it for every member.
    fn publish<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        data: &'a str,
    ) -> BoxFuture<'a, Result<Published, RpcError>>;

    /// The members of `room`.
    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Presence>>;

    /// Whether a connection of this server is in `room`.
    fn is_member(&self, room: &str, conn_id: u64) -> bool;

    /// The rooms a connection of this server is in, sorted.
    fn rooms_of(&self, conn_id: u64) -> Vec<String>;

    /// How many rooms a connection of this server is in.
    fn room_count_of(&self, conn_id: u64) -> usize;

    /// Queues `frame` for one connection; `false` if it is not open (or
    /// was closed as a slow consumer).
    fn send_to_conn(&self, conn_id: u64, frame: Outgoing) -> bool;

    /// Queues `frame` for every connection of `user`.
    fn send_to_user(&self, user: &str, frame: &Outgoing) -> usize;

    /// Queues `frame` for every connection (only the signed-in ones with
    /// `signed_in_only`), except those in `except`.
    fn broadcast(&self, frame: &Outgoing, except: &[u64], signed_in_only: bool) -> usize;

    /// The rooms and their history against their bounds (`/status`).
    fn usage(&self) -> RoomsUsage;

    /// Periodic housekeeping: drops rooms whose members are gone and whose
    /// history expired. Returns the bytes of history freed since the last
    /// call (so the caller can hand memory back to the system).
    fn sweep(&self) -> usize;

    /// `room`'s kept messages after `since`, oldest first, at most
    /// `limit` (the HTTP API's `history`).
    fn history<'a>(
        &'a self,
        room: &'a str,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<RoomHistory, RpcError>>;

    /// The rooms whose names start with `prefix`, by name, with their
    /// member counts; at most `limit` (the HTTP API's `rooms`).
    fn list_rooms<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RoomCount>, RpcError>>;

    /// Asks the connection `conn_id` to close (wherever it is); whether
    /// it was open.
    fn disconnect_conn<'a>(&'a self, conn_id: u64, close: &'a CloseRequest) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(self.hub().close(conn_id, close)))
    }

    /// Asks every connection of `user` to close (on every node); how many
    /// of this server's it closed.
    fn disconnect_user(&self, user: &str, close: &CloseRequest) -> usize {
        self.hub().close_user(user, close)
    }

    /// Tells the other nodes of a cluster of a revocation (this server
    /// applies it itself), and keeps it for nodes that start later.
    fn share_revocation(&self, _revocation: &Revocation) {}

    /// This server's connections.
    fn hub(&self) -> &Hub;

    /// Room memberships of this server's connections now.
    fn membership_count(&self) -> usize;

    /// Whether room operations may wait (on Redis): then a connection's
    /// room calls run beside its other calls instead of before them.
    fn waits(&self) -> bool {
        false
    }

    /// A cluster broker's state for `/status` (its node, its link to
    /// Redis, the last error); `None` for one node in memory.
    fn cluster_status(&self) -> Option<serde_json::Value> {
        None
    }

    /// In a cluster, when `conn_id` is another node's connection: asks
    /// that node to do `request` for it (the answer within `timeout`).
    /// `None` for this server's connections, or with no cluster.
    fn ask_node(
        &self,
        _conn_id: u64,
        _request: crate::cluster::NodeRequest,
        _timeout: std::time::Duration,
    ) -> Option<BoxFuture<'_, crate::cluster::NodeAnswer>> {
        None
    }

    /// In a cluster: what this node does when another asks it about one of
    /// its connections (the server's plugin services).
    fn set_request_handler(&self, _handler: Arc<dyn crate::cluster::NodeRequestHandler>) {}
}

/// The in-memory broker: this server's rooms, delivering through its hub.
#[derive(Debug)]
pub struct LocalBroker {
    rooms: Rooms,
    hub: Arc<Hub>,
}

impl LocalBroker {
    /// A broker over `rooms`, delivering through `hub`.
    pub fn new(rooms: Rooms, hub: Arc<Hub>) -> LocalBroker {
        LocalBroker { rooms, hub }
    }
}

impl Broker for LocalBroker {
    fn rule(&self, room: &str) -> Arc<RoomRule> {
        Arc::clone(self.rooms.rule(room))
    }

    fn check_access(
        &self,
        room: &str,
        identity: Option<&Identity>,
    ) -> Result<Arc<RoomRule>, RpcError> {
        self.rooms.check_access(room, identity)
    }

    fn join<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        conn: &'a ConnHandle,
        since: Option<Since<'a>>,
    ) -> BoxFuture<'a, Result<Joined, RpcError>> {
        let since = since.map(|s| (s.offset, s.epoch));
        let joined = self.rooms.join(&self.hub, room, rule, conn, since);
        Box::pin(std::future::ready(joined))
    }

    fn leave<'a>(&'a self, room: &'a str, conn_id: u64) -> BoxFuture<'a, bool> {
        Box::pin(std::future::ready(
            self.rooms.leave(&self.hub, room, conn_id),
        ))
    }

    fn leave_all(&self, conn_id: u64) -> BoxFuture<'_, Vec<String>> {
        Box::pin(std::future::ready(self.rooms.leave_all(&self.hub, conn_id)))
    }

    fn publish<'a>(
        &'a self,
        room: &'a str,
        rule: &'a Arc<RoomRule>,
        data: &'a str,
    ) -> BoxFuture<'a, Result<Published, RpcError>> {
        let published =
            self.rooms
                .publish(&self.hub, room, rule, data)
                .map(|(offset, queued_here)| {
                    crate::metrics::global().published(queued_here);
                    Published {
                        offset,
                        queued_here,
                    }
                });
        Box::pin(std::future::ready(published))
    }

    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Vec<Presence>> {
        Box::pin(std::future::ready(self.rooms.presence(room)))
    }

    fn is_member(&self, room: &str, conn_id: u64) -> bool {
        self.rooms.is_member(room, conn_id)
    }

    fn rooms_of(&self, conn_id: u64) -> Vec<String> {
        self.rooms.rooms_of(conn_id)
    }

    fn room_count_of(&self, conn_id: u64) -> usize {
        self.rooms.count_of(conn_id)
    }

    fn send_to_conn(&self, conn_id: u64, frame: Outgoing) -> bool {
        self.hub.send_to_conn(conn_id, frame)
    }

    fn send_to_user(&self, user: &str, frame: &Outgoing) -> usize {
        self.hub.send_to_user(user, frame)
    }

    fn broadcast(&self, frame: &Outgoing, except: &[u64], signed_in_only: bool) -> usize {
        self.hub.broadcast(frame, except, signed_in_only)
    }

    fn usage(&self) -> RoomsUsage {
        self.rooms.usage()
    }

    fn sweep(&self) -> usize {
        self.rooms.sweep();
        self.rooms.take_released_history_bytes()
    }

    fn history<'a>(
        &'a self,
        room: &'a str,
        since: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<RoomHistory, RpcError>> {
        Box::pin(std::future::ready(Ok(self
            .rooms
            .history(room, since, limit))))
    }

    fn list_rooms<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RoomCount>, RpcError>> {
        Box::pin(std::future::ready(Ok(self.rooms.list(prefix, limit))))
    }

    fn hub(&self) -> &Hub {
        &self.hub
    }

    fn membership_count(&self) -> usize {
        self.rooms.membership_count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use crate::rooms::RoomLimits;
    use crate::rooms::hub::{ConnFlow, outgoing};
    use crate::rooms::queue;
    use tokio_util::sync::CancellationToken;

    fn broker() -> (LocalBroker, Arc<Hub>) {
        let hub = Arc::new(Hub::new(1 << 20));
        let limits = RoomLimits {
            max_rooms: 10,
            max_history_bytes: 1 << 20,
        };
        let broker = LocalBroker::new(Rooms::new(&[], limits), Arc::clone(&hub));
        (broker, hub)
    }

    fn connect(hub: &Hub, conn_id: u64, user: &str) -> (ConnHandle, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::channel(64);
        let handle = ConnHandle {
            conn_id,
            user: Some(Arc::from(user)),
            tx,
            kick: CancellationToken::new(),
            connected_at: 0,
            remote_addr: Arc::from("test"),
            flow: Arc::new(ConnFlow::new(1000)),
        };
        hub.register(handle.clone());
        (handle, rx)
    }

    #[tokio::test]
    async fn joins_publishes_presence_and_leaves_go_through_the_interface() {
        let (broker, hub) = broker();
        let broker: &dyn Broker = &broker;
        let (ann, mut ann_rx) = connect(&hub, 1, "ann");
        let (bob, _bob_rx) = connect(&hub, 2, "bob");
        let rule = broker.rule("lobby");
        for member in [&ann, &bob] {
            broker
                .join("lobby", &rule, member, None)
                .await
                .expect("joins");
        }
        assert!(broker.is_member("lobby", 1));
        assert_eq!(broker.room_count_of(2), 1);
        let published = broker
            .publish("lobby", &rule, r#"{"hi":1}"#)
            .await
            .expect("publishes");
        assert_eq!(
            published,
            Published {
                offset: 1,
                queued_here: 2
            }
        );
        let frames: Vec<Outgoing> = std::iter::from_fn(|| ann_rx.try_recv().ok()).collect();
        assert!(
            frames
                .iter()
                .any(|f| f.as_str().contains(r#""offset":1,"data":{"hi":1}"#)),
            "ann got the message"
        );
        let members: Vec<u64> = broker
            .presence("lobby")
            .await
            .iter()
            .map(|m| m.conn)
            .collect();
        assert_eq!(members, [1, 2]);

        // A rejoin with the epoch and offset it saw recovers from history.
        let joined = broker
            .join("lobby", &rule, &ann, None)
            .await
            .expect("rejoins");
        let epoch = joined.epoch.clone();
        assert!(broker.leave("lobby", 1).await);
        assert!(!broker.leave("lobby", 1).await, "not a member any more");
        let since = Since {
            offset: 0,
            epoch: Some(&epoch),
        };
        let recovered = broker
            .join("lobby", &rule, &ann, Some(since))
            .await
            .expect("recovers");
        assert_eq!(recovered.recovered, Some(true));
        assert_eq!(broker.leave_all(1).await, ["lobby"]);
        assert_eq!(broker.rooms_of(1), Vec::<String>::new());
    }

    #[test]
    fn pushes_reach_a_connection_a_user_and_everyone() {
        let (broker, hub) = broker();
        let (_ann, mut ann_rx) = connect(&hub, 1, "ann");
        let (_bob, mut bob_rx) = connect(&hub, 2, "bob");
        let frame = outgoing("{}");
        assert!(broker.send_to_conn(1, frame.clone()));
        assert!(!broker.send_to_conn(9, frame.clone()));
        assert_eq!(broker.send_to_user("bob", &frame), 1);
        assert_eq!(broker.broadcast(&frame, &[2], false), 1);
        assert_eq!(std::iter::from_fn(|| ann_rx.try_recv().ok()).count(), 2);
        assert_eq!(std::iter::from_fn(|| bob_rx.try_recv().ok()).count(), 1);
        assert_eq!(broker.usage().rooms, 0);
        assert_eq!(broker.sweep(), 0);
    }
}
