//! [`LocalMembers`]: the rooms this node's connections are in, and the
//! delivery of each room's messages (heard once per node from Redis) to
//! them, once each and in offset order.
//!
//! Each room remembers the last offset it delivered, so a message heard
//! twice (after a resubscription, or replayed from history while the
//! live copy arrives) is delivered once. A joining member is registered
//! with the offset its replay reached (its floor): live messages at or
//! below it were in the replay. The room also keeps its last few live
//! messages, so a member whose replay was read just before a message
//! arrived gets that message from here.

use crate::rooms::hub::{ConnHandle, Hub, Outgoing};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Live messages a room keeps for members that join while they arrive.
const RECENT: usize = 64;

/// One member of a local room.
#[derive(Debug)]
struct Member {
    handle: ConnHandle,
    /// The offset its replay reached: live messages above it are its.
    floor: u64,
}

/// A room as this node sees it.
#[derive(Debug, Default)]
struct LocalRoom {
    /// By connection id: a fan-out visits them in the order they came
    /// (see [`Hub::push_to_each`]).
    members: BTreeMap<u64, Member>,
    /// The room's epoch, as last heard.
    epoch: String,
    /// The highest offset delivered here in `epoch`.
    delivered: u64,
    /// The last live messages, oldest first.
    recent: VecDeque<(u64, Outgoing)>,
}

/// Where a room's delivery stands, for a catch-up after a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Delivered {
    /// The room's epoch, as last heard.
    pub(super) epoch: String,
    /// The highest offset delivered in it.
    pub(super) offset: u64,
}

/// The `room.gap` event: messages after `offset` in `epoch` could not be
/// delivered; rejoin with `since` to learn whether they can be.
pub(super) fn gap_event(room: &str, epoch: &str, offset: u64) -> Outgoing {
    crate::rooms::event_frame(
        "room.gap",
        &serde_json::json!({"room": room, "epoch": epoch, "offset": offset}),
    )
}

/// Every room with members on this node.
#[derive(Debug, Default)]
pub(super) struct LocalMembers {
    rooms: Mutex<HashMap<String, LocalRoom>>,
    memberships: Mutex<HashMap<u64, HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section leaves the maps whole: poison is harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalMembers {
    /// Whether `room` has members here.
    pub(super) fn membership_count(&self) -> usize {
        lock(&self.memberships).values().map(HashSet::len).sum()
    }

    pub(super) fn has_room(&self, room: &str) -> bool {
        lock(&self.rooms).contains_key(room)
    }

    /// Every room with members here.
    pub(super) fn room_names(&self) -> Vec<String> {
        lock(&self.rooms).keys().cloned().collect()
    }

    /// Where `room`'s delivery stands.
    pub(super) fn delivered(&self, room: &str) -> Option<Delivered> {
        lock(&self.rooms).get(room).map(|r| Delivered {
            epoch: r.epoch.clone(),
            offset: r.delivered,
        })
    }

    /// Makes sure `room` has an entry here before its history is read for
    /// a join, so live messages heard from then on are kept for it.
    pub(super) fn prepare(&self, room: &str) {
        lock(&self.rooms).entry(room.to_owned()).or_default();
    }

    /// Adds `handle` to `room` (prepared), whose history was read at
    /// `offset` in `epoch`: queues `replay` (the missed messages, in
    /// order) and then any live message above `offset` heard meanwhile.
    /// Returns whether it was already a member.
    pub(super) fn join(
        &self,
        hub: &Hub,
        room: &str,
        handle: &ConnHandle,
        epoch: &str,
        offset: u64,
        replay: &[Outgoing],
    ) -> bool {
        let mut rooms = lock(&self.rooms);
        let local = rooms.entry(room.to_owned()).or_default();
        if local.epoch != epoch {
            // Nothing heard yet, or the room's history was lost in Redis
            // and started again: what was heard before says nothing now.
            local.epoch = epoch.to_owned();
            local.delivered = offset;
            local.recent.clear();
            for member in local.members.values_mut() {
                member.floor = 0;
            }
        } else if local.members.is_empty() {
            local.delivered = local.delivered.max(offset);
        }
        if local.members.contains_key(&handle.conn_id) {
            return true;
        }
        for frame in replay {
            hub.push(handle, frame.clone());
        }
        let mut floor = offset;
        if local.delivered > floor
            && local
                .recent
                .front()
                .is_none_or(|(oldest, _)| *oldest > floor + 1)
        {
            // More arrived between its history read and now than the room
            // keeps: say so rather than skip them silently.
            tracing::warn!(
                room,
                conn = handle.conn_id,
                "cluster: a joiner missed messages"
            );
            hub.push(handle, gap_event(room, epoch, floor));
        }
        for (live_offset, frame) in &local.recent {
            if *live_offset > floor {
                hub.push(handle, frame.clone());
                floor = *live_offset;
            }
        }
        local.members.insert(
            handle.conn_id,
            Member {
                handle: handle.clone(),
                floor,
            },
        );
        drop(rooms);
        lock(&self.memberships)
            .entry(handle.conn_id)
            .or_default()
            .insert(room.to_owned());
        false
    }

    /// Removes a connection from `room`. Returns `None` if it was not a
    /// member, else whether the room has no members here any more (and
    /// is forgotten).
    pub(super) fn leave(&self, room: &str, conn_id: u64) -> Option<bool> {
        if let Some(rooms) = lock(&self.memberships).get_mut(&conn_id) {
            rooms.remove(room);
        }
        let mut rooms = lock(&self.rooms);
        let local = rooms.get_mut(room)?;
        local.members.remove(&conn_id)?;
        let emptied = local.members.is_empty();
        if emptied {
            rooms.remove(room);
        }
        Some(emptied)
    }

    /// Forgets the room entry of a room that has no members (a join that
    /// failed after it was made).
    pub(super) fn forget_if_empty(&self, room: &str) -> bool {
        let mut rooms = lock(&self.rooms);
        if rooms.get(room).is_some_and(|r| r.members.is_empty()) {
            rooms.remove(room);
            return true;
        }
        false
    }

    /// Removes a connection from every room; their names, sorted.
    pub(super) fn take_memberships(&self, conn_id: u64) -> Vec<String> {
        let mut rooms: Vec<String> = lock(&self.memberships)
            .remove(&conn_id)
            .map(|r| r.into_iter().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// Whether a connection is in `room`.
    pub(super) fn is_member(&self, room: &str, conn_id: u64) -> bool {
        lock(&self.rooms)
            .get(room)
            .is_some_and(|r| r.members.contains_key(&conn_id))
    }

    /// The rooms a connection is in, sorted.
    pub(super) fn rooms_of(&self, conn_id: u64) -> Vec<String> {
        let mut rooms: Vec<String> = lock(&self.memberships)
            .get(&conn_id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// How many rooms a connection is in.
    pub(super) fn count_of(&self, conn_id: u64) -> usize {
        lock(&self.memberships)
            .get(&conn_id)
            .map_or(0, HashSet::len)
    }

    /// The members of `room` here, with their users.
    pub(super) fn members(&self, room: &str) -> Vec<ConnHandle> {
        lock(&self.rooms)
            .get(room)
            .map(|r| r.members.values().map(|m| m.handle.clone()).collect())
            .unwrap_or_default()
    }

    /// Delivers message `offset` of `room` in `epoch` to the room's
    /// members here, unless it was delivered already; returns to how
    /// many it was queued.
    pub(super) fn deliver(
        &self,
        hub: &Hub,
        room: &str,
        epoch: &str,
        offset: u64,
        frame: &Outgoing,
    ) -> usize {
        let mut rooms = lock(&self.rooms);
        let Some(local) = rooms.get_mut(room) else {
            return 0;
        };
        if local.epoch != epoch {
            // A new epoch: the room's history was lost in Redis and its
            // offsets started again.
            local.epoch = epoch.to_owned();
            local.delivered = 0;
            local.recent.clear();
            for member in local.members.values_mut() {
                member.floor = 0;
            }
        }
        if offset <= local.delivered {
            // Heard twice, or in every member's replay already.
            return 0;
        }
        local.delivered = offset;
        local.recent.push_back((offset, frame.clone()));
        if local.recent.len() > RECENT {
            local.recent.pop_front();
        }
        let queued = hub.push_to_each(
            local
                .members
                .values()
                .filter(|m| offset > m.floor)
                .map(|m| &m.handle),
            frame,
        );
        crate::metrics::global().delivered(queued);
        queued
    }

    /// Queues an event frame for the room's members here, except `except`.
    pub(super) fn push_event(&self, hub: &Hub, room: &str, frame: &Outgoing, except: u64) {
        let rooms = lock(&self.rooms);
        if let Some(local) = rooms.get(room) {
            for member in local.members.values() {
                if member.handle.conn_id != except {
                    hub.push(&member.handle, frame.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rooms::hub::{ConnFlow, outgoing};
    use crate::rooms::queue;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn connect(hub: &Hub, conn_id: u64) -> (ConnHandle, queue::Receiver<Outgoing>) {
        let (tx, rx) = queue::channel(64);
        let handle = ConnHandle {
            conn_id,
            user: None,
            tx,
            kick: CancellationToken::new(),
            connected_at: 0,
            remote_addr: Arc::from("test"),
            flow: Arc::new(ConnFlow::new(100)),
        };
        hub.register(handle.clone());
        (handle, rx)
    }

    fn frames(rx: &mut queue::Receiver<Outgoing>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|f| f.as_str().to_owned())
            .collect()
    }

    #[test]
    fn a_message_heard_twice_is_delivered_once_and_in_order() {
        let hub = Hub::new(1 << 20);
        let local = LocalMembers::default();
        let (ann, mut ann_rx) = connect(&hub, 1);
        local.prepare("r");
        assert!(!local.join(&hub, "r", &ann, "e1", 0, &[]));
        for offset in [1, 2, 2, 1, 3] {
            local.deliver(&hub, "r", "e1", offset, &outgoing(format!("m{offset}")));
        }
        assert_eq!(frames(&mut ann_rx), ["m1", "m2", "m3"]);
        assert_eq!(
            local.delivered("r"),
            Some(Delivered {
                epoch: "e1".into(),
                offset: 3
            })
        );
    }

    #[test]
    fn a_joiner_gets_its_replay_then_what_was_heard_meanwhile_and_no_double() {
        let hub = Hub::new(1 << 20);
        let local = LocalMembers::default();
        let (ann, mut ann_rx) = connect(&hub, 1);
        let (bob, mut bob_rx) = connect(&hub, 2);
        local.prepare("r");
        local.join(&hub, "r", &ann, "e1", 0, &[]);
        // Bob's history read said offset 2 (replaying 1 and 2); message 3
        // was heard after that read but before his join registered.
        local.deliver(&hub, "r", "e1", 1, &outgoing("m1"));
        local.deliver(&hub, "r", "e1", 2, &outgoing("m2"));
        local.prepare("r");
        local.deliver(&hub, "r", "e1", 3, &outgoing("m3"));
        let replay = [outgoing("m1"), outgoing("m2")];
        local.join(&hub, "r", &bob, "e1", 2, &replay);
        local.deliver(&hub, "r", "e1", 4, &outgoing("m4"));
        assert_eq!(frames(&mut bob_rx), ["m1", "m2", "m3", "m4"]);
        assert_eq!(frames(&mut ann_rx), ["m1", "m2", "m3", "m4"]);
    }

    #[test]
    fn a_new_epoch_starts_offsets_again_and_leaving_the_last_forgets_the_room() {
        let hub = Hub::new(1 << 20);
        let local = LocalMembers::default();
        let (ann, mut ann_rx) = connect(&hub, 1);
        local.prepare("r");
        local.join(&hub, "r", &ann, "e1", 5, &[]);
        local.deliver(&hub, "r", "e1", 6, &outgoing("old6"));
        // Redis lost the room: a new epoch, offsets from 1 again.
        local.deliver(&hub, "r", "e2", 1, &outgoing("new1"));
        assert_eq!(frames(&mut ann_rx), ["old6", "new1"]);
        assert_eq!(local.rooms_of(1), ["r"]);
        assert_eq!(local.leave("r", 1), Some(true));
        assert_eq!(local.leave("r", 1), None);
        assert!(!local.has_room("r"));
        assert_eq!(local.count_of(1), 0);
    }
}
