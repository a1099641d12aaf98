//! The HTTP API's methods. Each takes its params as a JSON object and
//! answers a JSON value, or an [`RpcError`] with the socket's codes
//! (-32601 unknown method, -32602 bad params, -32006 Redis unavailable).
//! In a cluster each acts on the whole cluster through the broker.

use super::orders;
use crate::auth::now_secs;
use crate::auth::revocations::{Revocation, Target};
use crate::rooms::hub::CloseRequest;
use crate::rooms::policy::check_name;
use crate::rpc::error::{ErrorCode, RpcError};
use crate::state::ServerState;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The methods, as metrics label them (anything else is `unknown`).
const METHODS: [&str; 9] = [
    "publish",
    "broadcast",
    "send",
    "disconnect",
    "presence",
    "history",
    "rooms",
    "info",
    "revoke",
];

/// Most messages `history` answers at once.
const MAX_HISTORY_LIMIT: usize = 1000;

/// Most rooms `rooms` lists at once.
const MAX_ROOMS_LIMIT: usize = 10_000;

/// The longest a revocation may hold: a year.
const MAX_REVOCATION_SECS: u64 = 365 * 24 * 3600;

/// The close code `disconnect` uses unless given one.
pub(super) const DISCONNECTED: u16 = 4003;

/// `method` as a metrics label: one of the methods, or `unknown`.
pub(super) fn label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("unknown")
}

/// Runs `method` with `params`.
pub(super) async fn call(
    state: &Arc<ServerState>,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    match method {
        "publish" => publish(state, parse(method, params, PUBLISH)?).await,
        "broadcast" => Ok(broadcast(state, parse(method, params, BROADCAST)?)),
        "send" => send(state, parse(method, params, SEND)?),
        "disconnect" => disconnect(state, parse(method, params, DISCONNECT)?).await,
        "presence" => presence(state, parse(method, params, PRESENCE)?).await,
        "history" => history(state, parse(method, params, HISTORY)?).await,
        "rooms" => rooms(state, parse(method, params, ROOMS)?).await,
        "info" => Ok(info(state)),
        "revoke" => revoke(state, parse(method, params, REVOKE)?),
        _ => Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!(
                "no API method '{method}'; the methods are {}",
                METHODS.join(", ")
            ),
        )),
    }
}

/// Reads `params` as `T`, or says what was expected.
fn parse<T: DeserializeOwned>(method: &str, params: Value, shape: &str) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        params
    };
    serde_json::from_value(params).map_err(|e| {
        RpcError::new(
            ErrorCode::InvalidParams,
            format!("{method} takes {shape}: {e}"),
        )
    })
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError::new(ErrorCode::InvalidParams, message)
}

fn room_name(room: &str) -> Result<(), RpcError> {
    check_name(room).map_err(invalid)
}

const PUBLISH: &str = r#"{"room": "...", "data": ...}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    room: String,
    data: Box<RawValue>,
}

/// `publish {room, data}` -> `{offset}`: as a client's `rpc.publish`,
/// without membership or the room's publish policy.
async fn publish(state: &ServerState, p: Publish) -> Result<Value, RpcError> {
    room_name(&p.room)?;
    let rule = state.broker.rule(&p.room);
    let published = state.broker.publish(&p.room, &rule, p.data.get()).await?;
    Ok(serde_json::json!({"offset": published.offset}))
}

const BROADCAST: &str = r#"{"event": "...", "data": ..., "except": [conn, ...]}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Broadcast {
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    except: Vec<u64>,
}

/// `broadcast {event, data, except?}`: an `rpc.event` to every connection.
fn broadcast(state: &ServerState, p: Broadcast) -> Value {
    let frame = crate::rooms::event_frame(&p.event, &p.data);
    let queued = state.broker.broadcast(&frame, &p.except, false);
    serde_json::json!({"queued_here": queued})
}

const SEND: &str = r#"{"conn": id} or {"user": "..."}, with "event": "..." and "data": ..."#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send {
    conn: Option<u64>,
    user: Option<String>,
    event: String,
    #[serde(default)]
    data: Value,
}

/// `send {conn | user, event, data}`: an `rpc.event` to one connection or
/// to every connection of a user.
fn send(state: &ServerState, p: Send) -> Result<Value, RpcError> {
    let frame = crate::rooms::event_frame(&p.event, &p.data);
    match (p.conn, p.user) {
        (Some(conn), None) => {
            Ok(serde_json::json!({"sent": state.broker.send_to_conn(conn, frame)}))
        }
        (None, Some(user)) => {
            Ok(serde_json::json!({"queued_here": state.broker.send_to_user(&user, &frame)}))
        }
        _ => Err(invalid(format!(
            "send takes {SEND}: give exactly one of conn and user"
        ))),
    }
}

const DISCONNECT: &str =
    r#"{"conn": id} or {"user": "..."}, with "code"?: 4000-4999 and "reason"?: "...""#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    conn: Option<u64>,
    user: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
}

/// `disconnect {conn | user, code?, reason?}`: closes connections.
async fn disconnect(state: &ServerState, p: Disconnect) -> Result<Value, RpcError> {
    let code = p.code.unwrap_or(DISCONNECTED);
    if !(code == 1000 || code == 1008 || (4000..=4999).contains(&code)) {
        return Err(invalid(format!(
            "close code {code} is not one a server may send here: use 1000, 1008 or 4000-4999"
        )));
    }
    let reason = p
        .reason
        .unwrap_or_else(|| "disconnected by the server".to_owned());
    if reason.len() > 123 {
        return Err(invalid(
            "the close reason is over 123 bytes (what a Close frame carries)",
        ));
    }
    let close = CloseRequest { code, reason };
    match (p.conn, p.user) {
        (Some(conn), None) => {
            let closed = state.broker.disconnect_conn(conn, &close).await;
            Ok(serde_json::json!({"closed": usize::from(closed)}))
        }
        (None, Some(user)) => {
            Ok(serde_json::json!({"closed_here": state.broker.disconnect_user(&user, &close)}))
        }
        _ => Err(invalid(format!(
            "disconnect takes {DISCONNECT}: give exactly one of conn and user"
        ))),
    }
}

const PRESENCE: &str = r#"{"room": "..."}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Presence {
    room: String,
}

/// `presence {room}` -> `{room, members: [{conn, user}]}`.
async fn presence(state: &ServerState, p: Presence) -> Result<Value, RpcError> {
    room_name(&p.room)?;
    let members = state.broker.presence(&p.room).await;
    Ok(serde_json::json!({"room": p.room, "members": members}))
}

const HISTORY: &str = r#"{"room": "...", "since"?: offset, "limit"?: 1-1000}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct History {
    room: String,
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

/// `history {room, since?, limit?}` -> `{room, epoch, offset, messages}`:
/// the kept messages after `since`, oldest first (page on from the last
/// offset answered).
async fn history(state: &ServerState, p: History) -> Result<Value, RpcError> {
    room_name(&p.room)?;
    let limit = bounded("limit", p.limit.unwrap_or(100), MAX_HISTORY_LIMIT)?;
    let history = state.broker.history(&p.room, p.since, limit).await?;
    serde_json::to_value(history).map_err(|e| RpcError::new(ErrorCode::Internal, e.to_string()))
}

const ROOMS: &str = r#"{"prefix"?: "...", "limit"?: 1-10000}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rooms {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
}

/// `rooms {prefix?, limit?}` -> `{rooms: [{room, members}]}`, by name.
async fn rooms(state: &ServerState, p: Rooms) -> Result<Value, RpcError> {
    let limit = bounded("limit", p.limit.unwrap_or(1000), MAX_ROOMS_LIMIT)?;
    let rooms = state.broker.list_rooms(&p.prefix, limit).await?;
    Ok(serde_json::json!({"rooms": rooms}))
}

fn bounded(name: &str, value: usize, max: usize) -> Result<usize, RpcError> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(format!("{name} must be 1 to {max}")))
    }
}

/// `info` -> this node: its name, version, uptime, connections, rooms,
/// plugins.
fn info(state: &ServerState) -> Value {
    let snapshot = state.registry.snapshot();
    let plugins: Vec<Value> = snapshot
        .plugins
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "version": p.version,
                "generation": p.generation,
                "actions": p.actions.iter().map(|a| &a.path).collect::<Vec<_>>(),
            })
        })
        .collect();
    let node = state
        .broker
        .cluster_status()
        .and_then(|c| c.get("node").cloned())
        .unwrap_or(Value::Null);
    serde_json::json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "connections": state.connections(),
        "rooms": state.broker.usage().rooms,
        "plugins": plugins,
    })
}

const REVOKE: &str = r#"{"user": "..."} or {"jti": "..."}, with "until": Unix seconds"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    user: Option<String>,
    jti: Option<String>,
    until: u64,
}

/// `revoke {user | jti, until}`: refuses that user's tokens issued until
/// now (or that token) until `until`, and closes the connections signed
/// in with them with 4002.
fn revoke(state: &ServerState, p: Revoke) -> Result<Value, RpcError> {
    let now = now_secs();
    if p.until <= now || p.until > now + MAX_REVOCATION_SECS {
        return Err(invalid(format!(
            "until must be a Unix time in seconds after now ({now}) and within a year"
        )));
    }
    let target = match (p.user, p.jti) {
        (Some(user), None) if !user.is_empty() => Target::User(user),
        (None, Some(jti)) if !jti.is_empty() => Target::Jti(jti),
        _ => {
            return Err(invalid(format!(
                "revoke takes {REVOKE}: give exactly one of user and jti"
            )));
        }
    };
    let revocation = Revocation {
        target,
        revoked_at: now,
        until: p.until,
    };
    let closed = orders::revoke_here(state, &revocation)
        .map_err(|full| RpcError::new(ErrorCode::Overloaded, full.to_string()))?;
    state.broker.share_revocation(&revocation);
    Ok(serde_json::json!({"closed_here": closed, "revoked_at": now}))
}
