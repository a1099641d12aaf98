//! Presence across nodes, and this node's claim on its number.
//!
//! A room's members are a sorted set of connection ids, each scored by
//! when its node last vouched for it plus `node_timeout`. Every node
//! refreshes its own members a few times per `node_timeout`; readers
//! count only the members whose score is still ahead. A node that dies
//! stops refreshing: its members expire, and the first node to notice
//! removes each one and tells the room (`presence.leave`), so no ghost
//! outlives the timeout.

use super::{Inner, keys, now_ms, scripts};
use crate::rooms::Presence;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connection ids carry the node's number in their top bits: at most
/// this many numbers (20 bits, so ids stay below 2^53, exact in
/// JavaScript).
const NODE_NUMBERS: u64 = 1 << 20;

/// Claims a node number no live node holds (the claim expires unless
/// refreshed). With Redis unreachable at start, a random number is used
/// unclaimed: a clash among 2^20 is unlikely, and it is claimed at the
/// first refresh that reaches Redis.
pub(super) async fn claim_node_number(
    commands: &mut ConnectionManager,
    node_id: &str,
    node_timeout: Duration,
) -> u64 {
    let mut number = random_number();
    for _ in 0..16 {
        let claimed: Result<Option<String>, redis::RedisError> = redis::cmd("SET")
            .arg(keys::node_claim(number))
            .arg(node_id)
            .arg("NX")
            .arg("PX")
            .arg(claim_ms(node_timeout))
            .query_async(commands)
            .await;
        match claimed {
            Ok(Some(_)) => return number,
            Ok(None) => number = random_number(),
            Err(e) => {
                tracing::warn!(
                    "cluster: Redis is unreachable at start ({e}); this node serves, and rooms \
                     work once it is back"
                );
                return number;
            }
        }
    }
    number
}

fn random_number() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    (u64::from_le_bytes(bytes) % (NODE_NUMBERS - 1)) + 1
}

fn claim_ms(node_timeout: Duration) -> u64 {
    u64::try_from(node_timeout.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
}

/// The live members of `room`, on every node, by connection id.
pub(super) async fn members(inner: &Inner, room: &str) -> Result<Vec<Presence>, redis::RedisError> {
    let mut commands = inner.commands.clone();
    let conns: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys::presence(room))
        .arg(now_ms())
        .arg("+inf")
        .query_async(&mut commands)
        .await?;
    if conns.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys::presence_users(room))
        .arg(&conns)
        .query_async(&mut commands)
        .await?;
    let mut members: Vec<Presence> = conns
        .into_iter()
        .zip(users)
        .map(|(conn, user)| Presence {
            user: user.filter(|u| !u.is_empty()),
            conn,
        })
        .collect();
    members.sort_by_key(|m| m.conn);
    Ok(members)
}

/// Refreshes this node's claim and its members' presence a few times per
/// `node_timeout`, and removes members whose node stopped vouching for
/// them, until `stop`.
pub(super) async fn refresh(inner: Arc<Inner>, stop: CancellationToken) {
    let period = (inner.node_timeout / 3).max(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = refresh_once(&inner).await {
            inner.link.health.failed(&e.to_string());
            tracing::warn!("cluster: presence refresh failed: {e}");
        }
    }
}

async fn refresh_once(inner: &Inner) -> Result<(), redis::RedisError> {
    let mut commands = inner.commands.clone();
    let now = now_ms();
    let expires = now + u64::try_from(inner.node_timeout.as_millis()).unwrap_or(u64::MAX);
    redis::cmd("SET")
        .arg(keys::node_claim(inner.number))
        .arg(&inner.node_id)
        .arg("PX")
        .arg(claim_ms(inner.node_timeout))
        .query_async::<()>(&mut commands)
        .await?;
    for room in inner.local.room_names() {
        let members = inner.local.members(&room);
        if !members.is_empty() {
            let mut pipe = redis::pipe();
            for member in &members {
                pipe.cmd("ZADD")
                    .arg(keys::presence(&room))
                    .arg("XX")
                    .arg(expires)
                    .arg(member.conn_id)
                    .ignore();
            }
            pipe.cmd("EXPIRE")
                .arg(keys::presence(&room))
                .arg(inner.presence_ttl_secs())
                .ignore();
            pipe.cmd("EXPIRE")
                .arg(keys::presence_users(&room))
                .arg(inner.presence_ttl_secs())
                .ignore();
            pipe.query_async::<()>(&mut commands).await?;
        }
        expire_ghosts(inner, &room, now).await?;
    }
    Ok(())
}

/// Removes the members of `room` no node vouched for in time, telling
/// the room of each (only the node whose removal took effect tells).
async fn expire_ghosts(inner: &Inner, room: &str, now: u64) -> Result<(), redis::RedisError> {
    let mut commands = inner.commands.clone();
    let ghosts: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys::presence(room))
        .arg("-inf")
        .arg(format!("({now}"))
        .query_async(&mut commands)
        .await?;
    for conn in ghosts {
        let removed: Option<String> = scripts::LEAVE
            .key(keys::presence(room))
            .key(keys::presence_users(room))
            .arg(conn)
            .invoke_async(&mut commands)
            .await?;
        let Some(user) = removed else { continue };
        tracing::info!(
            room,
            conn,
            "cluster: a member of a node that stopped answering left"
        );
        inner.announce_leave(room, conn, &user).await;
    }
    Ok(())
}
