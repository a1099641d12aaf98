//! Rooms: membership, fan-out, history with recovery, and presence.
//!
//! - [`hub`]: every open connection's outbound queue, by connection id and
//!   by user: what every push (room message, send, broadcast) goes through;
//!   [`queue`]: that queue, small while idle.
//! - [`policy`]: the `[[rooms]]` rules and their name patterns.
//! - [`history`]: each room's kept messages, and the server-wide budget
//!   of history bytes they share.
//! - `idle`: rooms with no members left, oldest first: the first to go
//!   when the server needs room. An emptied room keeps its epoch and last
//!   offset (and its history) for its rule's `history_ttl_secs`, so a
//!   client that was in it can still recover (`recovered: true`) after
//!   others came and published; the sweep then forgets it.
//! - `capacity`: creating rooms and keeping history within the server's
//!   bounds ([`RoomLimits`]), and their use ([`RoomsUsage`]).
//! - `membership`: joining (with recovery), leaving, and each
//!   connection's rooms.
//! - [`Rooms`]: every room by name (sharded), and every connection's rooms.
//! - [`broker`]: the [`broker::Broker`] interface the rest of the server
//!   uses, and its in-memory implementation over [`Rooms`] and [`Hub`].
//!
//! Bounded by default: rooms in all (`max_rooms`; idle rooms make way
//! before a new room is refused), history bytes in all
//! (`max_history_bytes`; idle rooms' history goes first, then the
//! publishing room's oldest messages), rooms a connection may create per
//! minute (its [`ConnFlow`]), members per room, rooms per connection.
//!
//! A message is turned into its `rpc.message` frame once, under the room's
//! lock (which also assigns its offset and stores it in the history), and
//! the same reference-counted bytes are queued for every member without
//! waiting ([`Hub::push`]). A join registers the member and queues any
//! replay under the same lock, so replayed messages always come before
//! live ones and none is lost or doubled in between.

pub mod broker;
mod capacity;
pub mod history;
pub mod hub;
mod idle;
mod membership;
pub mod policy;
pub mod queue;

pub use capacity::{RoomLimits, RoomsUsage};

use crate::auth::Identity;
#[cfg(doc)]
use crate::rooms::hub::ConnFlow;
use crate::rooms::hub::{ConnHandle, Hub, Outgoing, outgoing};
use crate::rpc::error::{ErrorCode, RpcError};
use history::{History, HistoryBudget};
use idle::IdleQueue;
use policy::{JoinPolicy, RoomRule, check_name, matches, matches_any_user};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the room map and the membership index.
const SHARDS: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections update their maps in single steps, and a panic in
    // one cannot leave a room half-changed; poison is harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap and stable; only spreads rooms over shards.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) & (SHARDS - 1)
}

#[derive(Debug)]
struct Member {
    handle: ConnHandle,
}

#[derive(Debug)]
struct RoomState {
    /// Set when the room was dropped from the map: whoever still holds it
    /// must look the room up again.
    removed: bool,
    epoch: String,
    last_offset: u64,
    history: History,
    /// By connection id, so in the order the connections came: a
    /// fan-out then visits their queues in the order they were allocated
    /// (see [`Hub::push_to_each`]).
    members: BTreeMap<u64, Member>,
    /// Non-zero while the room has no members: its number in the idle
    /// queue.
    idle: u64,
    /// When the room last had no members (made empty, or created with
    /// none): it is kept at least its history's age bound after that.
    emptied_at: Instant,
}

/// One room.
#[derive(Debug)]
struct Room {
    name: String,
    rule: Arc<RoomRule>,
    state: Mutex<RoomState>,
}

impl RoomState {
    /// Whether the room should be in the idle queue but is not yet.
    fn needs_idle_mark(&self) -> bool {
        self.idle == 0 && self.members.is_empty() && !self.removed
    }

    /// Whether nothing of the room matters any more: no members, no
    /// history, and no recently departed member who could come back to
    /// recover (within the history's age bound of its emptying; at once
    /// when the room keeps no history).
    fn forgettable(&self, rule: &RoomRule) -> bool {
        self.members.is_empty()
            && self.history.is_empty()
            && (rule.history_size == 0
                || self.emptied_at.elapsed() >= Duration::from_secs(rule.history_ttl_secs))
    }
}

/// What `rpc.join` answers.
#[derive(Debug, Serialize)]
pub struct Joined {
    /// The room.
    pub room: String,
    /// The offset of the room's latest message (0 when none yet).
    pub offset: u64,
    /// The room's epoch: offsets continue only within one epoch.
    pub epoch: String,
    /// With `since`: whether every missed message was replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A member as `rpc.presence` lists it.
#[derive(Debug, Serialize)]
pub struct Presence {
    /// The member's user, if signed in.
    pub user: Option<String>,
    /// The member's connection id.
    pub conn: u64,
}

/// A room's kept messages, as the HTTP API's `history` answers.
#[derive(Debug, Serialize)]
pub struct RoomHistory {
    /// The room.
    pub room: String,
    /// Its epoch (`None`: no such room now).
    pub epoch: Option<String>,
    /// The offset of its latest message.
    pub offset: u64,
    /// The messages asked for, oldest first.
    pub messages: Vec<HistoryEntry>,
}

/// One kept message.
#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// Its data.
    pub data: Box<serde_json::value::RawValue>,
}

impl HistoryEntry {
    /// The message an `rpc.message` frame carries.
    fn from_frame(frame: &str) -> Option<HistoryEntry> {
        #[derive(serde::Deserialize)]
        struct Frame {
            params: Params,
        }
        #[derive(serde::Deserialize)]
        struct Params {
            offset: u64,
            data: Box<serde_json::value::RawValue>,
        }
        let frame: Frame = serde_json::from_str(frame).ok()?;
        Some(HistoryEntry {
            offset: frame.params.offset,
            data: frame.params.data,
        })
    }
}

/// A room and how many members it has, as the HTTP API's `rooms` lists.
#[derive(Debug, Serialize)]
pub struct RoomCount {
    /// The room.
    pub room: String,
    /// Its members.
    pub members: usize,
}

/// Every room, and every connection's rooms.
#[derive(Debug)]
pub struct Rooms {
    rules: Vec<Arc<RoomRule>>,
    default_rule: Arc<RoomRule>,
    rooms: Vec<Mutex<HashMap<String, Arc<Room>>>>,
    memberships: Vec<Mutex<HashMap<u64, HashSet<String>>>>,
    max_rooms: usize,
    /// Rooms in `rooms` now.
    count: AtomicUsize,
    history: HistoryBudget,
    idle: IdleQueue<Room>,
    idle_evicted: AtomicU64,
    rooms_refused: AtomicU64,
    creations_rate_limited: AtomicU64,
}

/// A fresh epoch: 8 random bytes in hex.
pub(crate) fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = fallback_epoch().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An epoch for when the OS random source fails: the wall clock in
/// nanoseconds, the process id and a counter, mixed (SplitMix64), so two
/// epochs of this process never repeat and a restarted process starts
/// elsewhere.
fn fallback_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut z =
        nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `rpc.message` frame for one message: built once, shared by all.
pub(crate) fn message_frame(room: &str, offset: u64, data: &str) -> Outgoing {
    let room = serde_json::to_string(room).unwrap_or_else(|_| "\"\"".to_owned());
    outgoing(format!(
        r#"{{"jsonrpc":"2.0","method":"rpc.message","params":{{"room":{room},"offset":{offset},"data":{data}}}}}"#
    ))
}

/// An `rpc.event` push, ready to queue.
pub fn event_frame(event: &str, data: &serde_json::Value) -> Outgoing {
    outgoing(crate::rpc::protocol::event_push(event, data))
}

impl Rooms {
    /// Rooms governed by `rules` (first match wins; the defaults after),
    /// within `limits`.
    pub fn new(rules: &[RoomRule], limits: RoomLimits) -> Rooms {
        Rooms {
            rules: rules.iter().cloned().map(Arc::new).collect(),
            default_rule: Arc::new(RoomRule::default()),
            rooms: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            memberships: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_rooms: limits.max_rooms,
            count: AtomicUsize::new(0),
            history: HistoryBudget::new(limits.max_history_bytes),
            idle: IdleQueue::new(),
            idle_evicted: AtomicU64::new(0),
            rooms_refused: AtomicU64::new(0),
            creations_rate_limited: AtomicU64::new(0),
        }
    }

    /// The rule for `room`: the same for every caller (`{sub}` matches any
    /// user here; whether the caller is that user is checked on access).
    pub fn rule(&self, room: &str) -> &Arc<RoomRule> {
        self.rules
            .iter()
            .find(|r| matches_any_user(&r.pattern, room))
            .unwrap_or(&self.default_rule)
    }

    /// Checks that `identity` may join (or read the presence of) `room`.
    pub fn check_access(
        &self,
        room: &str,
        identity: Option<&Identity>,
    ) -> Result<Arc<RoomRule>, RpcError> {
        check_name(room).map_err(|e| RpcError::new(ErrorCode::InvalidParams, e))?;
        let user = identity.map(|i| &*i.user);
        let rule = self.rule(room);
        // A `{sub}` room belongs to the user it names.
        if rule.pattern.contains("{sub}") && !matches(&rule.pattern, room, user) {
            return Err(match user {
                None => RpcError::new(
                    ErrorCode::Unauthenticated,
                    format!("room '{room}' needs a signed-in connection"),
                ),
                Some(_) => RpcError::new(
                    ErrorCode::Forbidden,
                    format!("room '{room}' belongs to another user"),
                ),
            });
        }
        match (rule.join, identity) {
            (JoinPolicy::Anyone, _) => {}
            (_, None) => {
                return Err(RpcError::new(
                    ErrorCode::Unauthenticated,
                    format!("room '{room}' needs a signed-in connection"),
                ));
            }
            (JoinPolicy::SignedIn | JoinPolicy::Hook, Some(_)) => {}
            (JoinPolicy::Claim, Some(identity)) => {
                if !identity
                    .rooms
                    .iter()
                    .any(|claim| matches(claim, room, user))
                {
                    return Err(RpcError::new(
                        ErrorCode::Forbidden,
                        format!("your token's rooms claim does not include room '{room}'"),
                    ));
                }
            }
        }
        Ok(Arc::clone(rule))
    }

    fn existing(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.rooms[shard_of(name)]).get(name).cloned()
    }

    /// Publishes raw JSON `data` to a room (created if it does not exist,
    /// within `max_rooms`): assigns the next offset, keeps it in the
    /// history, and queues it for every member. Returns the offset and how
    /// many members it was queued for.
    pub fn publish(
        &self,
        hub: &Hub,
        room: &str,
        rule: &Arc<RoomRule>,
        data: &str,
    ) -> Result<(u64, usize), RpcError> {
        let target = self.room(room, rule, None)?;
        let mut state = lock(&target.state);
        if state.removed {
            drop(state);
            return self.publish(hub, room, rule, data);
        }
        state.last_offset += 1;
        let offset = state.last_offset;
        let frame = message_frame(room, offset, data);
        if target.rule.history_size > 0 {
            state.history.push(offset, frame.clone(), &self.history);
            state.history.trim(&target.rule, &self.history);
        }
        let delivered = hub.push_to_each(state.members.values().map(|m| &m.handle), &frame);
        let idle = self.mark_idle(&mut state);
        drop(state);
        if let Some(number) = idle {
            self.queue_idle(&target, number);
        }
        if self.history.over() {
            self.reclaim_history(&target);
        }
        Ok((offset, delivered))
    }

    /// The members of a room.
    pub fn presence(&self, room: &str) -> Vec<Presence> {
        let Some(target) = self.existing(room) else {
            return Vec::new();
        };
        let state = lock(&target.state);
        let mut members: Vec<Presence> = state
            .members
            .values()
            .map(|m| Presence {
                user: m.handle.user.as_deref().map(str::to_owned),
                conn: m.handle.conn_id,
            })
            .collect();
        members.sort_by_key(|m| m.conn);
        members
    }

    /// A room's kept messages after `since`, oldest first, at most
    /// `limit` of them (`epoch` is `None` for a room this server does not
    /// hold).
    pub fn history(&self, room: &str, since: u64, limit: usize) -> RoomHistory {
        let mut history = RoomHistory {
            room: room.to_owned(),
            epoch: None,
            offset: 0,
            messages: Vec::new(),
        };
        let Some(target) = self.existing(room) else {
            return history;
        };
        let mut state = lock(&target.state);
        state.history.trim(&target.rule, &self.history);
        history.epoch = Some(state.epoch.clone());
        history.offset = state.last_offset;
        history.messages = state
            .history
            .after(since)
            .take(limit)
            .filter_map(|stored| HistoryEntry::from_frame(stored.frame.as_str()))
            .collect();
        history
    }

    /// Room memberships of all connections now.
    pub fn membership_count(&self) -> usize {
        self.memberships
            .iter()
            .map(|shard| lock(shard).values().map(HashSet::len).sum::<usize>())
            .sum()
    }

    /// The rooms whose names start with `prefix`, by name, with their
    /// member counts: at most `limit` of them.
    pub fn list(&self, prefix: &str, limit: usize) -> Vec<RoomCount> {
        let mut found = Vec::new();
        for shard in &self.rooms {
            let rooms: Vec<Arc<Room>> = lock(shard)
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(_, room)| Arc::clone(room))
                .collect();
            found.extend(rooms.iter().map(|room| RoomCount {
                room: room.name.clone(),
                members: lock(&room.state).members.len(),
            }));
        }
        found.sort_by(|a, b| a.room.cmp(&b.room));
        found.truncate(limit);
        found
    }

    /// Forgets a room nothing of which matters any more (see
    /// `RoomState::forgettable`; its epoch goes with it: a later join
    /// starts a new one).
    fn remove_if_idle(&self, room: &Arc<Room>) {
        let mut shard = lock(&self.rooms[shard_of(&room.name)]);
        let mut state = lock(&room.state);
        state.history.trim(&room.rule, &self.history);
        if state.forgettable(&room.rule) && !state.removed {
            self.drop_room(&mut shard, room, &mut state);
        }
    }

    /// Drops rooms whose members are gone and whose history has expired
    /// (and, for a room that was emptied, its history's age bound has
    /// passed since). Called periodically.
    pub fn sweep(&self) {
        for shard in &self.rooms {
            let rooms: Vec<Arc<Room>> = lock(shard).values().cloned().collect();
            for room in rooms {
                self.remove_if_idle(&room);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rooms::hub::ConnFlow;
    use crate::rooms::queue;
    use tokio_util::sync::CancellationToken;

    fn rooms(max_rooms: usize, max_history_bytes: usize) -> (Rooms, Hub) {
        let limits = RoomLimits {
            max_rooms,
            max_history_bytes,
        };
        (Rooms::new(&[], limits), Hub::new(1 << 20))
    }

    /// A connection registered in `hub`, and its queue.
    fn member(hub: &Hub, conn_id: u64) -> (ConnHandle, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::channel(64);
        let handle = ConnHandle {
            conn_id,
            user: Some(Arc::from(format!("user-{conn_id}"))),
            tx,
            kick: CancellationToken::new(),
            connected_at: 0,
            remote_addr: Arc::from("test"),
            flow: Arc::new(ConnFlow::new(1000)),
        };
        hub.register(handle.clone());
        (handle, rx)
    }

    /// The offsets of the `rpc.message` frames queued on `rx`.
    fn offsets(rx: &mut queue::Receiver<Outgoing>) -> Vec<u64> {
        let mut seen = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            let value: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap_or_default();
            if value["method"] == "rpc.message" {
                seen.extend(value["params"]["offset"].as_u64());
            }
        }
        seen
    }

    fn join(
        rooms: &Rooms,
        hub: &Hub,
        room: &str,
        handle: &ConnHandle,
        since: Option<(u64, Option<&str>)>,
    ) -> Joined {
        let rule = Arc::clone(rooms.rule(room));
        rooms
            .join(hub, room, &rule, handle, since)
            .unwrap_or_else(|e| panic!("join {room}: {e}"))
    }

    fn publish(rooms: &Rooms, hub: &Hub, room: &str, data: &str) -> Result<u64, RpcError> {
        let rule = Arc::clone(rooms.rule(room));
        rooms
            .publish(hub, room, &rule, data)
            .map(|(offset, _)| offset)
    }

    #[test]
    fn members_get_every_message_in_order_and_a_rejoin_replays_the_gap() {
        let (rooms, hub) = rooms(10, 1 << 20);
        let (ann, mut ann_rx) = member(&hub, 1);
        let epoch = join(&rooms, &hub, "lobby", &ann, None).epoch;
        for n in 1..=3 {
            assert_eq!(publish(&rooms, &hub, "lobby", "1").ok(), Some(n));
        }
        assert_eq!(offsets(&mut ann_rx), [1, 2, 3]);
        let (bob, mut bob_rx) = member(&hub, 2);
        let joined = join(&rooms, &hub, "lobby", &bob, Some((1, Some(epoch.as_str()))));
        assert_eq!((joined.offset, joined.recovered), (3, Some(true)));
        assert_eq!(offsets(&mut bob_rx), [2, 3], "the missed ones, in order");
        let (cy, mut cy_rx) = member(&hub, 3);
        let joined = join(&rooms, &hub, "lobby", &cy, Some((1, Some("another epoch"))));
        assert_eq!(joined.recovered, Some(false));
        assert!(offsets(&mut cy_rx).is_empty());
    }

    #[test]
    fn idle_rooms_make_way_at_the_room_bound_and_then_rooms_are_refused() {
        let (rooms, hub) = rooms(2, 1 << 20);
        let (ann, _rx) = member(&hub, 1);
        join(&rooms, &hub, "a", &ann, None);
        assert!(publish(&rooms, &hub, "a", "1").is_ok());
        assert!(
            rooms.leave(&hub, "a", 1),
            "a is idle now: no members, some history"
        );
        join(&rooms, &hub, "b", &ann, None);
        join(&rooms, &hub, "c", &ann, None);
        let usage = rooms.usage();
        assert_eq!((usage.rooms, usage.idle_rooms_evicted), (2, 1));
        let rule = Arc::clone(rooms.rule("d"));
        let refused = rooms.join(&hub, "d", &rule, &ann, None);
        assert!(
            matches!(&refused, Err(e) if e.code == crate::rpc::error::ErrorCode::Overloaded),
            "{refused:?}"
        );
        assert_eq!(rooms.usage().rooms_refused, 1);
    }

    #[test]
    fn history_past_the_budget_drops_idle_rooms_first_then_the_oldest() {
        let message = format!("\"{}\"", "m".repeat(1000));
        // Room for about four messages in all.
        let (rooms, hub) = rooms(100, 4 * 1100);
        let (ann, _rx) = member(&hub, 1);
        join(&rooms, &hub, "idle", &ann, None);
        for _ in 0..2 {
            assert!(publish(&rooms, &hub, "idle", &message).is_ok());
        }
        assert!(rooms.leave(&hub, "idle", 1));
        join(&rooms, &hub, "busy", &ann, None);
        for _ in 0..3 {
            assert!(publish(&rooms, &hub, "busy", &message).is_ok());
        }
        let usage = rooms.usage();
        assert_eq!(usage.idle_rooms_evicted, 1, "the idle room went first");
        assert!(usage.history_bytes <= usage.max_history_bytes);
        for _ in 0..3 {
            assert!(publish(&rooms, &hub, "busy", &message).is_ok());
        }
        let usage = rooms.usage();
        assert!(
            usage.history_messages_evicted >= 2,
            "then the busy room's oldest"
        );
        assert!(usage.history_bytes <= usage.max_history_bytes);
    }

    #[test]
    fn fallback_epochs_never_repeat() {
        let epochs: HashSet<u64> = (0..10_000).map(|_| fallback_epoch()).collect();
        assert_eq!(epochs.len(), 10_000);
        assert!(epochs.iter().all(|e| e.count_ones() > 8), "well mixed");
    }
}
