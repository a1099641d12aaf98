//! The room operations of the cluster broker: join (with the replay of
//! missed messages and presence), leave, publish and presence, each one
//! script in Redis, and the presence events they cause.

use super::history::{entries, fills_gap};
use super::*;

impl Inner {
    pub(super) fn room_keys_ttl(rule: &RoomRule) -> u64 {
        rule.history_ttl_secs.max(60)
    }

    pub(super) fn presence_ttl_secs(&self) -> u64 {
        self.node_timeout.as_secs().max(1) * 3
    }

    pub(super) async fn join(
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

    pub(super) async fn join_prepared(
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
    pub(super) async fn publish_event(&self, room: &str, except: u64, frame: &Outgoing) {
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

    pub(super) async fn leave(&self, room: &str, conn_id: u64) -> bool {
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
    pub(super) async fn remove_presence(&self, room: &str, conn_id: u64) {
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
    pub(super) fn rooms_full(&self, room: &str) -> RpcError {
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
    pub(super) async fn announce_leave(&self, room: &str, conn: u64, user: &str) {
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

    pub(super) async fn publish(
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
        // Deliveries are counted as this node hears it back.
        crate::metrics::global().published(0);
        // Members here get it when this node hears it back, in order
        // with every other node's messages.
        Ok(Published {
            offset,
            queued_here: self.local.members(room).len(),
        })
    }

    pub(super) async fn presence(&self, room: &str) -> Vec<Presence> {
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
}
