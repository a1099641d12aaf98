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
//!   falls between the replay and live delivery.
//! - Presence is a sorted set per room, scored by when the member's node
//!   last vouched for it (`presence`); a node that dies stops vouching
//!   and its members expire, each with a `presence.leave`.
//! - Pushes to a connection go to its node's channel (a connection id
//!   carries its node's number); pushes to a user or to everyone go to
//!   the channel every node hears.
//! - What a plugin may do to a connection (its info and data, joins,
//!   calls to the client) is asked of the node that holds it
//!   ([`requests`]).
//! - Keys and channels: `keys`; what the channels carry: `wire`.

mod keys;
mod link;
mod local;
mod presence;
pub mod requests;
mod scripts;
mod wire;

pub use link::LinkError;
pub use requests::{NodeAnswer, NodeRequest, NodeRequestHandler};

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

/// One-time tokens (`jti`) remembered in Redis, so a token opens one
/// connection in the whole cluster.
#[derive(Clone)]
pub struct SharedOneTimeTokens {
    commands: ConnectionManager,
}

impl std::fmt::Debug for SharedOneTimeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedOneTimeTokens")
    }
}

impl crate::auth::replay::OneTimeTokens for SharedOneTimeTokens {
    fn use_once<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
    ) -> BoxFuture<'a, Result<(), crate::auth::TokenError>> {
        Box::pin(async move {
            let mut commands = self.commands.clone();
            // At least a minute, so a token expiring now still cannot be
            // used twice within the leeway.
            let until = expires_at.max(crate::auth::now_secs() + 60);
            let set: Result<Option<String>, redis::RedisError> = redis::cmd("SET")
                .arg(keys::one_time_token(jti))
                .arg(1)
                .arg("NX")
                .arg("EXAT")
                .arg(until)
                .query_async(&mut commands)
                .await;
            match set {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(crate::auth::TokenError::Replayed),
                Err(e) => Err(crate::auth::TokenError::Unavailable(format!(
                    "this one-time token cannot be checked now: the cluster's Redis failed ({e}); \
                     retry in a moment"
                ))),
            }
        })
    }
}

impl RedisBroker {
    /// The cluster's record of one-time tokens, for the authenticator.
    pub fn one_time_tokens(&self) -> Arc<SharedOneTimeTokens> {
        Arc::new(SharedOneTimeTokens {
            commands: self.inner.commands.clone(),
        })
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts a push to other nodes as sent (or failed) when dropped.
struct ForwardDone(Arc<Inner>);

impl Drop for ForwardDone {
    fn drop(&mut self) {
        self.0
            .forwards
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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

/// One history entry: its offset, when it was published, its data.
struct Entry {
    offset: u64,
    at_ms: u64,
    data: String,
}

/// Reads the entries a script returned (`{id, {field, value, ...}}`).
fn entries(answer: &redis::Value) -> Vec<Entry> {
    let redis::Value::Array(items) = answer else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let redis::Value::Array(pair) = item else {
                return None;
            };
            let id: String = value(pair.first())?;
            let offset = id.split('-').next()?.parse().ok()?;
            let fields: Vec<String> = value(pair.get(1))?;
            let mut at_ms = 0;
            let mut data = None;
            for field in fields.chunks(2) {
                match (field.first().map(String::as_str), field.get(1)) {
                    (Some("t"), Some(t)) => at_ms = t.parse().unwrap_or(0),
                    (Some("d"), Some(d)) => data = Some(d.clone()),
                    _ => {}
                }
            }
            Some(Entry {
                offset,
                at_ms,
                data: data?,
            })
        })
        .collect()
}

/// Whether `entries` are exactly the messages after `since` up to
/// `offset`, none older than the rule keeps.
fn fills_gap(entries: &[Entry], since: u64, offset: u64, rule: &RoomRule) -> bool {
    let oldest_kept = now_ms().saturating_sub(rule.history_ttl_secs.saturating_mul(1000));
    entries.len() as u64 == offset - since
        && entries
            .iter()
            .zip(since + 1..)
            .all(|(e, expected)| e.offset == expected && e.at_ms >= oldest_kept)
}

impl Inner {
    fn room_keys_ttl(rule: &RoomRule) -> u64 {
        rule.history_ttl_secs.max(60)
    }

    fn presence_ttl_secs(&self) -> u64 {
        self.node_timeout.as_secs().max(1) * 3
    }

    async fn join(
        &self,
        room: &str,
        rule: &Arc<RoomRule>,
        conn: &ConnHandle,
        since: Option<Since<'_>>,
    ) -> Result<Joined, RpcError> {
        self.local.prepare(room);
        let result = self.join_prepared(room, rule, conn, since).await;
        if result.is_err() && self.local.forget_if_empty(room) {
            self.link
                .unsubscribe(room, || self.local.has_room(room))
                .await;
        }
        result
    }

    async fn join_prepared(
        &self,
        room: &str,
        rule: &Arc<RoomRule>,
        conn: &ConnHandle,
        since: Option<Since<'_>>,
    ) -> Result<Joined, RpcError> {
        self.link
            .subscribe(room)
            .await
            .map_err(|e| unavailable(self, &e))?;
        let now = now_ms();
        let expires = now + u64::try_from(self.node_timeout.as_millis()).unwrap_or(u64::MAX);
        let since_offset = since.map_or(-1, |s| i64::try_from(s.offset).unwrap_or(i64::MAX));
        // A room that does not exist yet takes one of the joiner's room
        // creations (given back if the room existed after all).
        let may_create = conn.flow.take_room_creation();
        let mut commands = self.commands.clone();
        let reply: Result<redis::Value, redis::RedisError> = scripts::JOIN
            .key(keys::meta(room))
            .key(keys::history(room))
            .key(keys::presence(room))
            .key(keys::presence_users(room))
            .key(keys::ROOM_INDEX)
            .arg(crate::rooms::new_epoch())
            .arg(since_offset)
            .arg(Self::room_keys_ttl(rule))
            .arg(rule.history_size.max(1))
            .arg(conn.conn_id)
            .arg(conn.user.as_deref().unwrap_or(""))
            .arg(expires)
            .arg(rule.max_members)
            .arg(now)
            .arg(self.presence_ttl_secs())
            .arg(u8::from(may_create))
            .arg(room)
            .arg(self.max_rooms)
            .invoke_async(&mut commands)
            .await;
        let parts = match reply {
            Ok(redis::Value::Array(parts)) => parts,
            Ok(_) => {
                give_back(conn, may_create);
                return Err(unavailable(self, &"an unexpected answer to a join"));
            }
            Err(e) => {
                give_back(conn, may_create);
                return Err(unavailable(self, &e));
            }
        };
        let created = value::<u8>(parts.get(4)) == Some(1);
        if !created {
            give_back(conn, may_create);
        }
        match value::<String>(parts.first()).as_deref() {
            Some("full") if parts.len() == 1 => {
                return Err(RpcError::new(
                    ErrorCode::Overloaded,
                    format!("room '{room}' is full ({} members)", rule.max_members),
                ));
            }
            Some("rooms") if parts.len() == 1 => return Err(self.rooms_full(room)),
            Some("create") if parts.len() == 1 => {
                return Err(RpcError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "room '{room}' does not exist, and this connection has created its limit of \
                         new rooms for now (max_room_creations_per_minute); join an existing room \
                         or retry in a minute"
                    ),
                ));
            }
            _ => {}
        }
        let epoch: String = value(parts.first()).unwrap_or_default();
        let offset: u64 = value(parts.get(1)).unwrap_or(0);
        let missed = parts.get(2).map(entries).unwrap_or_default();
        let was_member = value::<u8>(parts.get(3)) == Some(1);
        let mut replay: Vec<Outgoing> = Vec::new();
        let recovered = since.map(|since| {
            let same_epoch = since.epoch.is_some_and(|e| e == epoch);
            let filled = same_epoch
                && since.offset <= offset
                && fills_gap(&missed, since.offset, offset, rule);
            if !filled {
                return false;
            }
            replay = missed
                .iter()
                .map(|e| crate::rooms::message_frame(room, e.offset, &e.data))
                .collect();
            let lens: Vec<usize> = replay.iter().map(|f| f.len()).collect();
            if self.hub.would_take(conn, &lens) {
                true
            } else {
                replay.clear();
                false
            }
        });
        let already = self
            .local
            .join(&self.hub, room, conn, &epoch, offset, &replay);
        if !already && !was_member && rule.presence_events {
            let frame = event_frame(
                "presence.join",
                &serde_json::json!({"room": room, "user": conn.user.as_deref(), "conn": conn.conn_id}),
            );
            self.publish_event(room, conn.conn_id, &frame).await;
        }
        Ok(Joined {
            room: room.to_owned(),
            offset,
            epoch,
            recovered,
        })
    }

    /// Tells a room's members on every node of a presence change.
    async fn publish_event(&self, room: &str, except: u64, frame: &Outgoing) {
        let mut commands = self.commands.clone();
        let payload = wire::event(except, frame.as_str());
        let sent: Result<(), redis::RedisError> = redis::cmd("PUBLISH")
            .arg(keys::channel(room))
            .arg(payload)
            .query_async(&mut commands)
            .await;
        if let Err(e) = sent {
            self.link.health.failed(&e.to_string());
            tracing::warn!(room, "cluster: a presence event was not sent: {e}");
        }
    }

    async fn leave(&self, room: &str, conn_id: u64) -> bool {
        let Some(emptied) = self.local.leave(room, conn_id) else {
            return false;
        };
        self.remove_presence(room, conn_id).await;
        if emptied {
            self.link
                .unsubscribe(room, || self.local.has_room(room))
                .await;
        }
        true
    }

    /// Removes a member from a room's presence; the one caller that
    /// removed it tells the room.
    async fn remove_presence(&self, room: &str, conn_id: u64) {
        let mut commands = self.commands.clone();
        let removed: Result<Option<String>, redis::RedisError> = scripts::LEAVE
            .key(keys::presence(room))
            .key(keys::presence_users(room))
            .arg(conn_id)
            .invoke_async(&mut commands)
            .await;
        match removed {
            Ok(Some(user)) => self.announce_leave(room, conn_id, &user).await,
            Ok(None) => {}
            Err(e) => {
                // The member expires from presence on its own once this
                // node stops refreshing it.
                self.link.health.failed(&e.to_string());
                tracing::warn!(
                    room,
                    conn = conn_id,
                    "cluster: leave not recorded in Redis: {e}"
                );
            }
        }
    }

    /// The refusal of a new room when the cluster holds `max_rooms`.
    fn rooms_full(&self, room: &str) -> RpcError {
        RpcError::new(
            ErrorCode::Overloaded,
            format!(
                "room '{room}' cannot be created: the cluster holds its maximum of {} rooms \
                 (max_rooms); retry later",
                self.max_rooms
            ),
        )
    }

    /// Tells `room`'s members on every node that `conn` (of `user`, empty
    /// for anonymous) left, if the room's rule says to.
    async fn announce_leave(&self, room: &str, conn: u64, user: &str) {
        if !self.rules.rule(room).presence_events {
            return;
        }
        let user = (!user.is_empty()).then_some(user);
        let frame = event_frame(
            "presence.leave",
            &serde_json::json!({"room": room, "user": user, "conn": conn}),
        );
        self.publish_event(room, conn, &frame).await;
    }

    async fn publish(
        &self,
        room: &str,
        rule: &Arc<RoomRule>,
        data: &str,
    ) -> Result<Published, RpcError> {
        let mut commands = self.commands.clone();
        let answer: Vec<redis::Value> = scripts::PUBLISH
            .key(keys::meta(room))
            .key(keys::history(room))
            .key(keys::channel(room))
            .key(keys::ROOM_INDEX)
            .arg(crate::rooms::new_epoch())
            .arg(data)
            .arg(rule.history_size)
            .arg(Self::room_keys_ttl(rule))
            .arg(now_ms())
            .arg(room)
            .arg(self.max_rooms)
            .invoke_async(&mut commands)
            .await
            .map_err(|e| unavailable(self, &e))?;
        if answer.len() == 1 {
            return Err(self.rooms_full(room));
        }
        let offset: u64 = value(answer.first()).unwrap_or(0);
        // Members here get it when this node hears it back, in order
        // with every other node's messages.
        Ok(Published {
            offset,
            queued_here: self.local.members(room).len(),
        })
    }

    async fn presence(&self, room: &str) -> Vec<Presence> {
        match presence::members(self, room).await {
            Ok(members) => members,
            Err(e) => {
                self.link.health.failed(&e.to_string());
                tracing::warn!(room, "cluster: presence unavailable: {e}");
                // What this node knows: its own members.
                let mut members: Vec<Presence> = self
                    .local
                    .members(room)
                    .iter()
                    .map(|h| Presence {
                        user: h.user.as_deref().map(str::to_owned),
                        conn: h.conn_id,
                    })
                    .collect();
                members.sort_by_key(|m| m.conn);
                members
            }
        }
    }

    /// Publishes `payload` on `channel` without waiting (pushes).
    fn forward(self: &Arc<Self>, channel: String, payload: String) {
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

    /// After a lost subscription: reads each local room's history after
    /// what was delivered here and delivers it, in order, before anything
    /// heard live. A gap history cannot fill is told to the room's
    /// members (`room.gap`), who rejoin with `since` to learn what they
    /// missed is gone (`recovered: false`).
    async fn catch_up(&self) {
        for room in self.local.room_names() {
            let Some(delivered) = self.local.delivered(&room) else {
                continue;
            };
            let rule = self.rules.rule(&room);
            let Some(parts) = self.read_after(&room, delivered.offset, rule).await else {
                // Redis answered the subscription but not this: the members
                // are told rather than left with a silent gap.
                let frame = local::gap_event(&room, &delivered.epoch, delivered.offset);
                self.local.push_event(&self.hub, &room, &frame, 0);
                continue;
            };
            let epoch: Option<String> = value(parts.first());
            let offset: u64 = value(parts.get(1)).unwrap_or(0);
            let missed = parts.get(2).map(entries).unwrap_or_default();
            let same_epoch = epoch.as_deref() == Some(delivered.epoch.as_str());
            if same_epoch && offset <= delivered.offset {
                continue;
            }
            if same_epoch && fills_gap(&missed, delivered.offset, offset, rule) {
                for entry in &missed {
                    let frame = crate::rooms::message_frame(&room, entry.offset, &entry.data);
                    self.local
                        .deliver(&self.hub, &room, &delivered.epoch, entry.offset, &frame);
                }
                tracing::info!(room, caught_up = missed.len(), "cluster: caught up");
            } else {
                tracing::warn!(
                    room,
                    "cluster: messages were lost while Redis was unreachable"
                );
                let frame = local::gap_event(&room, &delivered.epoch, delivered.offset);
                self.local.push_event(&self.hub, &room, &frame, 0);
                // A new epoch (Redis lost the room while this node was
                // cut off): what it holds from its start was missed too.
                if let Some(new_epoch) = epoch.filter(|e| *e != delivered.epoch) {
                    self.deliver_new_epoch(&room, &new_epoch, rule).await;
                }
            }
        }
    }

    /// Delivers a new epoch's messages from its first, when its history
    /// still holds them all.
    async fn deliver_new_epoch(&self, room: &str, epoch: &str, rule: &RoomRule) {
        let Some(parts) = self.read_after(room, 0, rule).await else {
            return;
        };
        if value::<String>(parts.first()).as_deref() != Some(epoch) {
            return;
        }
        let offset: u64 = value(parts.get(1)).unwrap_or(0);
        let entries = parts.get(2).map(entries).unwrap_or_default();
        if !fills_gap(&entries, 0, offset, rule) {
            return;
        }
        for entry in &entries {
            let frame = crate::rooms::message_frame(room, entry.offset, &entry.data);
            self.local
                .deliver(&self.hub, room, epoch, entry.offset, &frame);
        }
        tracing::info!(
            room,
            delivered = entries.len(),
            "cluster: delivered the room's new epoch from its start"
        );
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
    fn on_request(&self, heard: requests::Heard) {
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
    async fn ask(&self, conn_id: u64, request: NodeRequest, timeout: Duration) -> NodeAnswer {
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

impl Inner {
    /// Reads `room`'s history after `offset` (the READ script's answer),
    /// trying a few times: just after a reconnection the command
    /// connection may still be re-establishing itself.
    async fn read_after(
        &self,
        room: &str,
        offset: u64,
        rule: &RoomRule,
    ) -> Option<Vec<redis::Value>> {
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let mut commands = self.commands.clone();
            let read: Result<redis::Value, redis::RedisError> = scripts::READ
                .key(keys::meta(room))
                .key(keys::history(room))
                .arg(offset)
                .arg(rule.history_size.max(1))
                .invoke_async(&mut commands)
                .await;
            match read {
                Ok(redis::Value::Array(parts)) => return Some(parts),
                Ok(_) => return None,
                Err(e) => tracing::debug!(room, "cluster: catch-up read failed: {e}"),
            }
        }
        None
    }
}

impl Listener for Inner {
    fn heard(&self, channel: &str, payload: &str) {
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
        let _ = self.inner.handler.set(handler);
    }
}

/// The limits of the rules-only [`Rooms`] a cluster broker keeps: its
/// rooms live in Redis, so no room is ever created in it.
pub fn rules_only_limits() -> RoomLimits {
    RoomLimits {
        max_rooms: 1,
        max_history_bytes: 1,
    }
}
