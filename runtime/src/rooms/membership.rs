//! Who is in which room: joining (with the replay of missed messages,
//! queued before any live one), leaving, and every connection's rooms.

use super::*;

impl Rooms {
    /// Adds a connection to a room (access already checked). With
    /// `since`, queues the missed messages before any live one. Returns the
    /// `rpc.join` result, and whether the connection was already a member.
    pub fn join(
        &self,
        hub: &Hub,
        room: &str,
        rule: &Arc<RoomRule>,
        handle: &ConnHandle,
        since: Option<(u64, Option<&str>)>,
    ) -> Result<Joined, RpcError> {
        let target = self.room(room, rule, Some(handle))?;
        let mut state = lock(&target.state);
        if state.removed {
            // Dropped between the check and now: start again.
            drop(state);
            return self.join(hub, room, rule, handle, since);
        }
        if !state.members.contains_key(&handle.conn_id)
            && state.members.len() >= target.rule.max_members
        {
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!(
                    "room '{room}' is full ({} members)",
                    target.rule.max_members
                ),
            ));
        }
        state.history.trim(&target.rule, &self.history);
        let already_member = state.members.contains_key(&handle.conn_id);
        let recovered = since.map(|(since, epoch)| {
            // Offsets mean nothing across epochs: no epoch, no recovery.
            let same_epoch = epoch.is_some_and(|e| e == state.epoch);
            let oldest_kept = state
                .history
                .oldest_offset()
                .unwrap_or(state.last_offset + 1);
            let gap_filled = since <= state.last_offset && since + 1 >= oldest_kept;
            let missed: Vec<usize> = state.history.after(since).map(|m| m.frame.len()).collect();
            // A member already receives every message: nothing to replay.
            // A replay larger than the free queue (in frames or bytes) would
            // only get the client closed as a slow consumer, again at every
            // reconnect: say the gap could not be filled instead.
            if already_member {
                same_epoch && gap_filled
            } else if same_epoch && gap_filled && hub.would_take(handle, &missed) {
                for message in state.history.after(since) {
                    hub.push(handle, message.frame.clone());
                }
                true
            } else {
                false
            }
        });
        state.idle = 0;
        let fresh = state
            .members
            .insert(
                handle.conn_id,
                Member {
                    handle: handle.clone(),
                },
            )
            .is_none();
        let joined = Joined {
            room: room.to_owned(),
            offset: state.last_offset,
            epoch: state.epoch.clone(),
            recovered,
        };
        if fresh && target.rule.presence_events {
            let frame = event_frame(
                "presence.join",
                &serde_json::json!({"room": room, "user": handle.user.as_deref(), "conn": handle.conn_id}),
            );
            for (conn, member) in &state.members {
                if *conn != handle.conn_id {
                    hub.push(&member.handle, frame.clone());
                }
            }
        }
        drop(state);
        lock(&self.memberships[(handle.conn_id as usize) & (SHARDS - 1)])
            .entry(handle.conn_id)
            .or_default()
            .insert(room.to_owned());
        // The connection may have closed meanwhile (a plugin thread joining
        // it server-side): then its cleanup may have run already, so undo.
        if hub.get(handle.conn_id).is_none() {
            self.leave(hub, room, handle.conn_id);
            return Err(RpcError::new(
                ErrorCode::Internal,
                "the connection closed while joining",
            ));
        }
        Ok(joined)
    }

    /// Removes a connection from a room; `false` if it was not a member.
    pub fn leave(&self, hub: &Hub, room: &str, conn_id: u64) -> bool {
        if let Some(rooms) =
            lock(&self.memberships[(conn_id as usize) & (SHARDS - 1)]).get_mut(&conn_id)
        {
            rooms.remove(room);
        }
        let Some(target) = self.existing(room) else {
            return false;
        };
        let mut state = lock(&target.state);
        let Some(left) = state.members.remove(&conn_id) else {
            return false;
        };
        if target.rule.presence_events {
            let frame = event_frame(
                "presence.leave",
                &serde_json::json!({"room": room, "user": left.handle.user.as_deref(), "conn": conn_id}),
            );
            for member in state.members.values() {
                hub.push(&member.handle, frame.clone());
            }
        }
        if state.members.is_empty() {
            state.emptied_at = Instant::now();
        }
        let forgettable = state.forgettable(&target.rule);
        let idle = self.mark_idle(&mut state);
        drop(state);
        if forgettable {
            self.remove_if_idle(&target);
        }
        if let Some(number) = idle {
            self.queue_idle(&target, number);
        }
        true
    }

    /// Removes a connection from all its rooms; returns their names.
    pub fn leave_all(&self, hub: &Hub, conn_id: u64) -> Vec<String> {
        let rooms: Vec<String> = lock(&self.memberships[(conn_id as usize) & (SHARDS - 1)])
            .remove(&conn_id)
            .map(|r| r.into_iter().collect())
            .unwrap_or_default();
        for room in &rooms {
            self.leave(hub, room, conn_id);
        }
        let mut rooms = rooms;
        rooms.sort();
        rooms
    }

    /// The rooms a connection is in, sorted.
    pub fn rooms_of(&self, conn_id: u64) -> Vec<String> {
        let mut rooms: Vec<String> = lock(&self.memberships[(conn_id as usize) & (SHARDS - 1)])
            .get(&conn_id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// How many rooms a connection is in.
    pub fn count_of(&self, conn_id: u64) -> usize {
        lock(&self.memberships[(conn_id as usize) & (SHARDS - 1)])
            .get(&conn_id)
            .map_or(0, HashSet::len)
    }

    /// Whether a connection is in a room.
    pub fn is_member(&self, room: &str, conn_id: u64) -> bool {
        lock(&self.memberships[(conn_id as usize) & (SHARDS - 1)])
            .get(&conn_id)
            .is_some_and(|r| r.contains(room))
    }
}
