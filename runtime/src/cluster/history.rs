//! A room's history as the cluster broker reads it: the entries a script
//! returns, whether they fill a gap, and the catch-up after a lost
//! subscription.

use super::*;

/// One history entry: its offset, when it was published, its data.
pub(super) struct Entry {
    /// Its offset in the room.
    pub(super) offset: u64,
    /// When it was published (ms since the Unix epoch).
    pub(super) at_ms: u64,
    /// Its data, raw JSON.
    pub(super) data: String,
}

/// Reads the entries a script returned (`{id, {field, value, ...}}`).
pub(super) fn entries(answer: &redis::Value) -> Vec<Entry> {
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
pub(super) fn fills_gap(entries: &[Entry], since: u64, offset: u64, rule: &RoomRule) -> bool {
    let oldest_kept = now_ms().saturating_sub(rule.history_ttl_secs.saturating_mul(1000));
    entries.len() as u64 == offset - since
        && entries
            .iter()
            .zip(since + 1..)
            .all(|(e, expected)| e.offset == expected && e.at_ms >= oldest_kept)
}

impl Inner {
    /// After a lost subscription: reads each local room's history after
    /// what was delivered here and delivers it, in order, before anything
    /// heard live. A gap history cannot fill is told to the room's
    /// members (`room.gap`), who rejoin with `since` to learn what they
    /// missed is gone (`recovered: false`).
    pub(super) async fn catch_up(&self) {
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
    pub(super) async fn deliver_new_epoch(&self, room: &str, epoch: &str, rule: &RoomRule) {
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
    /// Reads `room`'s history after `offset` (the READ script's answer),
    /// trying a few times: just after a reconnection the command
    /// connection may still be re-establishing itself.
    pub(super) async fn read_after(
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
