//! The room built-ins (`rpc.join`, `rpc.leave`, `rpc.leave_all`,
//! `rpc.publish`, `rpc.presence`): params, policy checks, and results.

use crate::rpc_error::{ErrorCode, RpcError};
use crate::session::Session;
use crate::state::ServerState;
use serde::Deserialize;
use serde_json::value::RawValue;

fn params<'a, T: Deserialize<'a>>(
    method: &str,
    raw: Option<&'a RawValue>,
    shape: &str,
) -> Result<T, RpcError> {
    let raw = raw.ok_or_else(|| {
        RpcError::new(
            ErrorCode::InvalidParams,
            format!("{method} needs params {shape}"),
        )
    })?;
    serde_json::from_str(raw.get())
        .map_err(|e| RpcError::new(ErrorCode::InvalidParams, format!("{method} params: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinParams {
    room: String,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomParams {
    room: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishParams<'a> {
    room: String,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// `rpc.join {room, since?, epoch?}`.
pub fn join(
    state: &ServerState,
    session: &Session,
    raw: Option<&RawValue>,
) -> Result<String, RpcError> {
    let p: JoinParams = params(
        "rpc.join",
        raw,
        r#"{"room": "...", "since": 41?, "epoch": "..."?}"#,
    )?;
    let rule = state
        .rooms
        .check_access(&p.room, session.live_identity().map(|i| &**i))?;
    let handle = session
        .handle
        .as_ref()
        .ok_or_else(|| RpcError::new(ErrorCode::Internal, "this connection is closing"))?;
    let since = p.since.map(|since| (since, p.epoch.as_deref()));
    let joined = state
        .rooms
        .join(&state.hub, &p.room, &rule, handle, since)?;
    Ok(to_json(&joined))
}

/// `rpc.leave {room}`.
pub fn leave(
    state: &ServerState,
    session: &Session,
    raw: Option<&RawValue>,
) -> Result<String, RpcError> {
    let p: RoomParams = params("rpc.leave", raw, r#"{"room": "..."}"#)?;
    if !state.rooms.leave(&state.hub, &p.room, session.conn_id) {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            format!("this connection is not in room '{}'", p.room),
        ));
    }
    Ok(to_json(&serde_json::json!({"room": p.room})))
}

/// `rpc.leave_all`.
pub fn leave_all(state: &ServerState, session: &Session) -> String {
    to_json(&serde_json::json!({"rooms": state.rooms.leave_all(&state.hub, session.conn_id)}))
}

/// `rpc.publish {room, data}`.
pub fn publish(
    state: &ServerState,
    session: &Session,
    raw: Option<&RawValue>,
) -> Result<String, RpcError> {
    let p: PublishParams<'_> = params("rpc.publish", raw, r#"{"room": "...", "data": ...}"#)?;
    let rule = state
        .rooms
        .check_access(&p.room, session.live_identity().map(|i| &**i))?;
    if !rule.publish {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!(
                "clients may not publish to room '{}'; its messages come from the server",
                p.room
            ),
        ));
    }
    let (offset, _) = state
        .rooms
        .publish(&state.hub, &p.room, &rule, p.data.get());
    Ok(format!(r#"{{"offset":{offset}}}"#))
}

/// `rpc.presence {room}`.
pub fn presence(
    state: &ServerState,
    session: &Session,
    raw: Option<&RawValue>,
) -> Result<String, RpcError> {
    let p: RoomParams = params("rpc.presence", raw, r#"{"room": "..."}"#)?;
    let rule = state
        .rooms
        .check_access(&p.room, session.live_identity().map(|i| &**i))?;
    if !rule.presence {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!("presence is off for room '{}'", p.room),
        ));
    }
    Ok(to_json(
        &serde_json::json!({"members": state.rooms.presence(&p.room)}),
    ))
}
