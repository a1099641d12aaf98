//! How rooms stay within the server's bounds: a room is created only
//! within `max_rooms` and its creator's allowance of creations, idle rooms
//! (no members, some history) make way first, oldest first, and history is
//! kept under its byte budget. `/status` reads [`RoomsUsage`].

use super::history::History;
use super::policy::RoomRule;
use super::{Room, RoomState, Rooms, lock, new_epoch, shard_of};
use crate::rooms::hub::ConnHandle;
use crate::rpc::error::{ErrorCode, RpcError};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The server-wide bounds on rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Most rooms in memory at once.
    pub max_rooms: usize,
    /// Most bytes of history kept in all rooms together.
    pub max_history_bytes: usize,
}

/// What `/status` shows of the rooms against their bounds.
#[derive(Debug, Serialize)]
pub struct RoomsUsage {
    /// Rooms in memory now.
    pub rooms: usize,
    /// Their bound.
    pub max_rooms: usize,
    /// Bytes of history kept now.
    pub history_bytes: usize,
    /// Their bound.
    pub max_history_bytes: usize,
    /// Idle rooms dropped (history and all) to make room, since start.
    pub idle_rooms_evicted: u64,
    /// Messages dropped from history early to stay under the byte bound.
    pub history_messages_evicted: u64,
    /// Room creations refused at `max_rooms`.
    pub rooms_refused: u64,
    /// Room creations refused by a connection's per-minute allowance.
    pub creations_rate_limited: u64,
}

/// Adds one to `counter` if it is below `max`, in one atomic step.
fn increment_below(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Rooms {
    /// The room `name`, created if it does not exist: within `max_rooms`
    /// (an idle room makes way first) and, when a connection's join
    /// creates it, within that connection's allowance of creations.
    pub(super) fn room(
        &self,
        name: &str,
        rule: &Arc<RoomRule>,
        creator: Option<&ConnHandle>,
    ) -> Result<Arc<Room>, RpcError> {
        if let Some(room) = self.existing(name) {
            return Ok(room);
        }
        // The creator's allowance is taken before anything is evicted for
        // the new room: a connection past its allowance cannot push other
        // rooms out by asking for new ones. Given back if no room is made.
        let allowance = creator.map(|c| &c.flow);
        if let Some(flow) = allowance
            && !flow.take_room_creation()
        {
            self.creations_rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(RpcError::new(
                ErrorCode::RateLimited,
                format!(
                    "room '{name}' does not exist, and this connection has created its limit of new \
                     rooms for now (max_room_creations_per_minute); join an existing room or retry \
                     in a minute"
                ),
            ));
        }
        let give_back = || {
            if let Some(flow) = allowance {
                flow.give_back_room_creation();
            }
        };
        loop {
            {
                let mut shard = lock(&self.rooms[shard_of(name)]);
                if let Some(room) = shard.get(name) {
                    // Made by someone else meanwhile.
                    give_back();
                    return Ok(Arc::clone(room));
                }
                if increment_below(&self.count, self.max_rooms) {
                    let room = Arc::new(Room {
                        name: name.to_owned(),
                        rule: Arc::clone(rule),
                        state: Mutex::new(RoomState {
                            removed: false,
                            epoch: new_epoch(),
                            last_offset: 0,
                            history: History::default(),
                            members: std::collections::BTreeMap::new(),
                            idle: 0,
                            emptied_at: Instant::now(),
                        }),
                    });
                    shard.insert(name.to_owned(), Arc::clone(&room));
                    return Ok(room);
                }
            }
            // At the bound: the oldest idle room makes way, if there is one.
            if !self.evict_idle_room() {
                give_back();
                self.rooms_refused.fetch_add(1, Ordering::Relaxed);
                return Err(RpcError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "room '{name}' cannot be created: the server holds its maximum of {} rooms \
                         (max_rooms); retry later",
                        self.max_rooms
                    ),
                ));
            }
        }
    }

    /// Drops the idle room that has been idle longest (history and all);
    /// `false` if there is none.
    pub(super) fn evict_idle_room(&self) -> bool {
        while let Some((number, room)) = self.idle.pop() {
            let Some(room) = room.upgrade() else {
                continue;
            };
            let mut shard = lock(&self.rooms[shard_of(&room.name)]);
            let mut state = lock(&room.state);
            if state.idle == number && state.members.is_empty() && !state.removed {
                self.drop_room(&mut shard, &room, &mut state);
                self.idle_evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Removes a room from its shard (both locked by the caller): its
    /// history and epoch go with it.
    pub(super) fn drop_room(
        &self,
        shard: &mut HashMap<String, Arc<Room>>,
        room: &Arc<Room>,
        state: &mut RoomState,
    ) {
        state.removed = true;
        state.history.clear(&self.history);
        if shard
            .get(&room.name)
            .is_some_and(|held| Arc::ptr_eq(held, room))
        {
            shard.remove(&room.name);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Puts a room that became idle (no members) in the idle
    /// queue, with the number its state was given. Called with no room
    /// lock held.
    pub(super) fn queue_idle(&self, room: &Arc<Room>, number: u64) {
        let limit = 2 * self.count.load(Ordering::Relaxed) + 64;
        self.idle.push(
            number,
            Arc::downgrade(room),
            limit,
            |number, room: &Room| {
                let state = lock(&room.state);
                state.idle == number && !state.removed
            },
        );
    }

    /// Marks a room idle if it has become so; returns the number to queue
    /// it under once its lock is released.
    pub(super) fn mark_idle(&self, state: &mut RoomState) -> Option<u64> {
        state.needs_idle_mark().then(|| {
            state.idle = self.idle.next_number();
            state.idle
        })
    }

    /// Keeps the server's history under its byte bound after `publishing`
    /// stored a message: idle rooms go first, oldest first; then the
    /// publishing room's own oldest messages.
    pub(super) fn reclaim_history(&self, publishing: &Arc<Room>) {
        while self.history.over() && self.evict_idle_room() {}
        if self.history.over() {
            let mut state = lock(&publishing.state);
            while self.history.over() && state.history.evict_oldest(&self.history) {}
        }
    }

    /// Rooms in memory now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The rooms and their history against their bounds.
    pub fn usage(&self) -> RoomsUsage {
        RoomsUsage {
            rooms: self.count(),
            max_rooms: self.max_rooms,
            history_bytes: self.history.used(),
            max_history_bytes: self.history.max(),
            idle_rooms_evicted: self.idle_evicted.load(Ordering::Relaxed),
            history_messages_evicted: self.history.evicted(),
            rooms_refused: self.rooms_refused.load(Ordering::Relaxed),
            creations_rate_limited: self.creations_rate_limited.load(Ordering::Relaxed),
        }
    }

    /// Bytes of history freed since the last call.
    pub fn take_released_history_bytes(&self) -> usize {
        self.history.take_released()
    }
}
