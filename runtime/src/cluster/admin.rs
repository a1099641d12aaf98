//! What the HTTP API asks of the whole cluster: a room's history and the
//! list of rooms (read from Redis), and orders every node carries out for
//! its own connections (close a user's connections, apply a revocation).
//!
//! An order travels on the channel every node hears as `o <origin>
//! <json>` ([`Order`]); the node that gave it has carried it out already.
//! Revocations are also kept in one Redis hash (`sb:revocations`, field
//! `u:<user>` or `j:<jti>`), which a node reads when it starts, so a node
//! that joins later refuses them too.

use super::history::entries;
use super::*;
use crate::auth::revocations::{Revocation, Target};
use crate::rooms::hub::CloseRequest;
use crate::rooms::{HistoryEntry, RoomCount, RoomHistory};
use serde::{Deserialize, Serialize};

/// The hash of revocations in force.
const REVOCATIONS: &str = "sb:revocations";

/// An order every node carries out for its own connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "order")]
pub enum Order {
    /// Close every connection of `user`.
    DisconnectUser {
        /// The user.
        user: String,
        /// How.
        close: CloseRequest,
    },
    /// Refuse these sign-ins from now on, and close the connections
    /// signed in with them.
    Revoke(Revocation),
}

/// `o`: an order from node `origin`.
pub(super) fn order(origin: u64, order: &Order) -> String {
    let body = serde_json::to_string(order).unwrap_or_default();
    format!("o {origin} {body}")
}

/// Reads an `o` payload: the node it came from, and the order.
pub(super) fn parse(payload: &str) -> Option<(u64, Order)> {
    let rest = payload.strip_prefix("o ")?;
    let (origin, body) = rest.split_once(' ')?;
    Some((origin.parse().ok()?, serde_json::from_str(body).ok()?))
}

/// The hash field of a revocation.
fn field(target: &Target) -> String {
    match target {
        Target::User(user) => format!("u:{user}"),
        Target::Jti(jti) => format!("j:{jti}"),
    }
}

impl Inner {
    /// Sends `order` to every other node.
    pub(super) fn give_order(self: &Arc<Self>, order: &Order) {
        self.forward(keys::EVERY_NODE.to_owned(), self::order(self.number, order));
    }

    /// Keeps a revocation in Redis for nodes that start later (until its
    /// end; a later one for the same target replaces it).
    pub(super) fn keep_revocation(self: &Arc<Self>, revocation: &Revocation) {
        let inner = Arc::clone(self);
        let revocation = revocation.clone();
        self.runtime.spawn(async move {
            let mut commands = inner.commands.clone();
            let body = serde_json::to_string(&revocation).unwrap_or_default();
            let kept: Result<(), redis::RedisError> = redis::cmd("HSET")
                .arg(REVOCATIONS)
                .arg(field(&revocation.target))
                .arg(body)
                .query_async(&mut commands)
                .await;
            if let Err(e) = kept {
                tracing::warn!("cluster: a revocation was not kept in Redis: {e}");
            }
        });
    }

    /// The revocations still in force kept in Redis (expired ones are
    /// removed on the way).
    pub(super) async fn kept_revocations(&self) -> Vec<Revocation> {
        let mut commands = self.commands.clone();
        let all: Result<Vec<(String, String)>, redis::RedisError> = redis::cmd("HGETALL")
            .arg(REVOCATIONS)
            .query_async(&mut commands)
            .await;
        let all = match all {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!("cluster: could not read the revocations kept in Redis: {e}");
                return Vec::new();
            }
        };
        let now = now_ms() / 1000;
        let mut expired = Vec::new();
        let mut in_force = Vec::new();
        for (field, body) in all {
            match serde_json::from_str::<Revocation>(&body) {
                Ok(r) if r.until > now => in_force.push(r),
                _ => expired.push(field),
            }
        }
        if !expired.is_empty() {
            let removed: Result<(), redis::RedisError> = redis::cmd("HDEL")
                .arg(REVOCATIONS)
                .arg(&expired)
                .query_async(&mut commands)
                .await;
            if let Err(e) = removed {
                tracing::debug!("cluster: expired revocations not removed: {e}");
            }
        }
        in_force
    }

    /// A room's history as Redis holds it.
    pub(super) async fn history(
        &self,
        room: &str,
        since: u64,
        limit: usize,
    ) -> Result<RoomHistory, RpcError> {
        let rule = self.rules.rule(room);
        let mut commands = self.commands.clone();
        let read: Result<redis::Value, redis::RedisError> = scripts::READ
            .key(keys::meta(room))
            .key(keys::history(room))
            .arg(since)
            .arg(limit.max(1))
            .invoke_async(&mut commands)
            .await;
        let parts = match read {
            Ok(redis::Value::Array(parts)) => parts,
            Ok(_) => Vec::new(),
            Err(e) => return Err(unavailable(self, &e)),
        };
        let oldest_kept = now_ms().saturating_sub(rule.history_ttl_secs.saturating_mul(1000));
        let messages = parts
            .get(2)
            .map(entries)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.at_ms >= oldest_kept)
            .take(limit)
            .filter_map(|e| {
                Some(HistoryEntry {
                    offset: e.offset,
                    data: serde_json::value::RawValue::from_string(e.data).ok()?,
                })
            })
            .collect();
        Ok(RoomHistory {
            room: room.to_owned(),
            epoch: value(parts.first()),
            offset: value(parts.get(1)).unwrap_or(0),
            messages,
        })
    }

    /// The cluster's rooms whose names start with `prefix`, with their
    /// members now.
    pub(super) async fn list_rooms(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<RoomCount>, RpcError> {
        let now = now_ms();
        let mut commands = self.commands.clone();
        let names: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::ROOM_INDEX)
            .arg(now)
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut commands)
            .await
            .map_err(|e| unavailable(self, &e))?;
        let mut names: Vec<String> = names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names.truncate(limit);
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("ZCOUNT")
                .arg(keys::presence(name))
                .arg(now)
                .arg("+inf");
        }
        let counts: Vec<usize> = if names.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut commands)
                .await
                .map_err(|e| unavailable(self, &e))?
        };
        Ok(names
            .into_iter()
            .zip(counts)
            .map(|(room, members)| RoomCount { room, members })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn orders_read_back() {
        let orders = [
            Order::DisconnectUser {
                user: "ann lee".into(),
                close: CloseRequest {
                    code: 4000,
                    reason: "bye now".into(),
                },
            },
            Order::Revoke(Revocation {
                target: Target::Jti("t 1".into()),
                revoked_at: 5,
                until: 9,
            }),
        ];
        for given in orders {
            assert_eq!(parse(&order(3, &given)), Some((3, given)));
        }
        assert_eq!(parse("q 1 2 3 {}"), None);
    }
}
