//! Cluster mode: several nodes behave as one server by sharing rooms,
//! history, presence and pushes through Redis ([`RedisBroker`], the
//! second implementation of [`Broker`]).
//!
//! - Publishing is one Lua script per message (`scripts`): it takes the
//!   room's next offset, appends the message to the room's history stream
//!   and publishes it on the room's channel, so offsets are gap-free and
//!   ordered per room across nodes. One Redis publish per message.
//! - Each node subscribes once per room with members here (`link`) and
//!   delivers what it hears to its own members (`local`), once each and
//!   in offset order, whichever node published.
//! - A join reads the room's epoch, offset and the missed messages in
//!   one script, after the node's subscription is confirmed, so nothing
//!   falls between the replay and live delivery (`operations`: join,
//!   leave, publish, presence; `history`: reading entries, and the
//!   catch-up after a lost subscription).
//! - Presence is a sorted set per room, scored by when the member's node
//!   last vouched for it (`presence`); a node that dies stops vouching
//!   and its members expire, each with a `presence.leave`.
//! - Pushes to a connection go to its node's channel (a connection id
//!   carries its node's number); pushes to a user or to everyone go to
//!   the channel every node hears (`node`).
//! - What a plugin may do to a connection (its info and data, joins,
//!   calls to the client) is asked of the node that holds it
//!   ([`requests`]).
//! - One-time tokens are one key each (`tokens`).
//! - The HTTP API's reads of Redis (history, rooms) and the orders every
//!   node carries out (disconnect a user, revoke): `admin`.
//! - Keys and channels: `keys`; what the channels carry: `wire`; the
//!   [`Broker`] implementation itself: `broker`.

mod admin;
mod broker;
mod history;
mod keys;
mod link;
mod local;
mod node;
mod operations;
mod presence;
pub mod requests;
mod scripts;
mod tokens;
mod wire;

pub use admin::Order;
pub use link::LinkError;
pub use requests::{NodeAnswer, NodeRequest, NodeRequestHandler};
pub use tokens::SharedOneTimeTokens;

use crate::auth::Identity;
use crate::rooms::broker::{Broker, Published, Since};
use crate::rooms::hub::{ConnHandle, Hub, Outgoing, outgoing};
use crate::rooms::policy::RoomRule;
use crate::rooms::{Joined, Presence, RoomLimits, Rooms, RoomsUsage, event_frame};
use crate::rpc::error::{ErrorCode, RpcError};
use futures_util::future::BoxFuture;
use link::{Link, Listener};
use local::LocalMembers;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long any one wait for Redis may take before the operation fails
/// with a clear error (Redis slow or gone).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Most pushes to other nodes (sends, broadcasts) in flight at once: past
/// it, with Redis too slow to take them, new ones are dropped and counted
/// rather than queued without bound.
const MAX_FORWARDS: usize = 4096;

/// The cluster's settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Where Redis is (`redis://host:port/db`).
    pub redis_url: String,
    /// This node's name (in logs and `/status`).
    pub node_id: String,
    /// How long a node's members stay in presence after its last refresh.
    pub node_timeout: Duration,
    /// Most rooms in the whole cluster (`max_rooms`).
    pub max_rooms: usize,
}

/// Why the cluster broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error("redis_url {url} is not usable: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
}

/// Rooms and pushes shared by every node through Redis.
pub struct RedisBroker {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.inner.node_id)
            .field("number", &self.inner.number)
            .finish_non_exhaustive()
    }
}

/// What the broker, its link task and its presence task share.
struct Inner {
    /// The room rules (and name and access checks).
    rules: Rooms,
    hub: Arc<Hub>,
    local: LocalMembers,
    link: Arc<Link>,
    commands: ConnectionManager,
    node_id: String,
    /// This node's number: the top bits of its connection ids.
    number: u64,
    node_timeout: Duration,
    /// Most rooms in the whole cluster.
    max_rooms: usize,
    /// The runtime pushes to other nodes are sent from (they may be asked
    /// for on a plugin's thread).
    runtime: tokio::runtime::Handle,
    /// Requests this node asked of others, waiting for their answers.
    pending: requests::Pending,
    /// Pushes to other nodes being sent now (bounded by [`MAX_FORWARDS`]).
    forwards: std::sync::atomic::AtomicUsize,
    /// Pushes to other nodes dropped at that bound (Redis too slow).
    forwards_dropped: std::sync::atomic::AtomicU64,
    /// What this node does when asked about its own connections.
    handler: std::sync::OnceLock<Arc<dyn NodeRequestHandler>>,
}

impl RedisBroker {
    /// Starts the cluster broker: claims a node number, and starts the
    /// pub/sub link and the presence refresh. Redis need not be up: the
    /// node serves, and room operations fail clearly, until it is.
    /// Returns the broker and this node's number (for connection ids).
    pub async fn start(
        settings: &ClusterSettings,
        rules: Rooms,
        hub: Arc<Hub>,
    ) -> Result<RedisBroker, ClusterError> {
        let client = redis::Client::open(settings.redis_url.as_str()).map_err(|source| {
            ClusterError::Url {
                url: settings.redis_url.clone(),
                source,
            }
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|source| {
                ClusterError::Url {
                    url: settings.redis_url.clone(),
                    source,
                }
            })?;
        let mut claim_connection = commands.clone();
        let number = presence::claim_node_number(
            &mut claim_connection,
            &settings.node_id,
            settings.node_timeout,
        )
        .await;
        crate::rpc::session::set_conn_id_base(number << 32);
        let link = Arc::new(Link::new(REDIS_TIMEOUT));
        let inner = Arc::new(Inner {
            rules,
            hub,
            local: LocalMembers::default(),
            link: Arc::clone(&link),
            commands,
            node_id: settings.node_id.clone(),
            number,
            node_timeout: settings.node_timeout,
            max_rooms: settings.max_rooms,
            runtime: tokio::runtime::Handle::current(),
            pending: requests::Pending::default(),
            forwards: std::sync::atomic::AtomicUsize::new(0),
            forwards_dropped: std::sync::atomic::AtomicU64::new(0),
            handler: std::sync::OnceLock::new(),
        });
        let stop = CancellationToken::new();
        let rooms_here = {
            let inner = Arc::clone(&inner);
            move || inner.local.room_names()
        };
        tokio::spawn(link.run(
            client,
            vec![keys::node_channel(number), keys::EVERY_NODE.to_owned()],
            rooms_here,
            Arc::clone(&inner) as Arc<dyn Listener>,
            stop.clone(),
        ));
        tokio::spawn(presence::refresh(Arc::clone(&inner), stop.clone()));
        // Serve once subscribed, so the first clients' joins find the
        // link up; with Redis down, serve anyway (rooms wait for it).
        if !inner.link.health.wait_connected(REDIS_TIMEOUT).await {
            tracing::warn!("cluster: not subscribed to Redis yet; serving, and retrying");
        }
        tracing::info!(
            node = %settings.node_id,
            number,
            "cluster: rooms, presence and pushes are shared through Redis"
        );
        Ok(RedisBroker { inner, stop })
    }

    /// The broker's state for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let health = &self.inner.link.health;
        serde_json::json!({
            "kind": "redis",
            "node": self.inner.node_id,
            "node_number": self.inner.number,
            "connected": health.connected(),
            "reconnects": health.reconnects(),
            "last_error": health.last_error(),
            "local_rooms": self.inner.local.room_names().len(),
            "pushes_dropped": self.inner.forwards_dropped.load(std::sync::atomic::Ordering::Relaxed),
        })
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A failure of Redis, as a client hears it: the call is shed, to retry.
fn unavailable(inner: &Inner, error: &impl std::fmt::Display) -> RpcError {
    let error = error.to_string();
    inner.link.health.failed(&error);
    let message = if error.contains("Redis") {
        error
    } else {
        format!("the cluster's Redis failed ({error}); nothing was done, retry in a moment")
    };
    RpcError::new(ErrorCode::Overloaded, message)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    crate::auth::now_millis()
}

/// Gives back a room creation taken for a join that created no room.
fn give_back(conn: &ConnHandle, taken: bool) {
    if taken {
        conn.flow.give_back_room_creation();
    }
}

/// Reads one value of a script's answer.
fn value<T: redis::FromRedisValue>(v: Option<&redis::Value>) -> Option<T> {
    T::from_redis_value_ref(v?).ok()
}

/// The limits of the rules-only [`Rooms`] a cluster broker keeps: its
/// rooms live in Redis, so no room is ever created in it.
pub fn rules_only_limits() -> RoomLimits {
    RoomLimits {
        max_rooms: 1,
        max_history_bytes: 1,
    }
}
