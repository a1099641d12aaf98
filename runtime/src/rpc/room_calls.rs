//! The room built-ins (`rpc.join`, `rpc.leave`, `rpc.leave_all`,
//! `rpc.publish`, `rpc.presence`): params, policy checks, and results.
//!
//! They act for a [`RoomCaller`]: what of a connection they need, taken
//! when the call is read, so that (in a cluster, where they wait for
//! Redis) they can run beside the connection's other calls, one at a time
//! and in the order they came (the connection's room lane).

use crate::auth::Identity;
use crate::plugins::invoke::{Deadline, PluginFault, invoke};
use crate::plugins::loader::JoinArgs;
use crate::rooms::broker::Since;
use crate::rooms::hub::ConnHandle;
use crate::rooms::policy::{JoinPolicy, matches};
use crate::rpc::error::{ErrorCode, RpcError};
use crate::state::ServerState;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

fn params<'a, T: Deserialize<'a>>(
    method: &str,
    raw: Option<&'a str>,
    shape: &str,
) -> Result<T, RpcError> {
    let raw = raw.ok_or_else(|| {
        RpcError::new(
            ErrorCode::InvalidParams,
            format!("{method} needs params {shape}"),
        )
    })?;
    serde_json::from_str(raw)
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

/// What a room call knows of the connection it acts for.
#[derive(Debug, Clone)]
pub struct RoomCaller {
    /// The connection.
    pub conn_id: u64,
    /// Who it is signed in as, if its sign-in is live.
    pub identity: Option<Arc<Identity>>,
    /// Its outbound queue (for joins); `None` while it closes.
    pub handle: Option<ConnHandle>,
}

/// How long a plugin's join hook may take.
const JOIN_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// `rpc.join {room, since?, epoch?}`.
pub async fn join(
    state: &ServerState,
    caller: &RoomCaller,
    raw: Option<&str>,
) -> Result<String, RpcError> {
    let p: JoinParams = params(
        "rpc.join",
        raw,
        r#"{"room": "...", "since": 41?, "epoch": "..."?}"#,
    )?;
    let identity = caller.identity.as_deref();
    let rule = state.broker.check_access(&p.room, identity)?;
    let limit = state.config.max_rooms_per_connection;
    if !state.broker.is_member(&p.room, caller.conn_id)
        && state.broker.room_count_of(caller.conn_id) >= limit
    {
        return Err(RpcError::new(
            ErrorCode::Overloaded,
            format!("this connection is in {limit} rooms already; leave one first"),
        ));
    }
    ask_join_hook(state, caller, &p.room, rule.join == JoinPolicy::Hook).await?;
    let handle = caller
        .handle
        .as_ref()
        .ok_or_else(|| RpcError::new(ErrorCode::Internal, "this connection is closing"))?;
    let since = p.since.map(|offset| Since {
        offset,
        epoch: p.epoch.as_deref(),
    });
    let joined = state.broker.join(&p.room, &rule, handle, since).await?;
    if let Some(recovered) = joined.recovered {
        crate::metrics::global().recovery(recovered);
    }
    Ok(to_json(&joined))
}

/// `rpc.leave {room}`.
pub async fn leave(
    state: &ServerState,
    caller: &RoomCaller,
    raw: Option<&str>,
) -> Result<String, RpcError> {
    let p: RoomParams = params("rpc.leave", raw, r#"{"room": "..."}"#)?;
    if !state.broker.leave(&p.room, caller.conn_id).await {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            format!("this connection is not in room '{}'", p.room),
        ));
    }
    Ok(to_json(&serde_json::json!({"room": p.room})))
}

/// `rpc.leave_all`.
pub async fn leave_all(state: &ServerState, caller: &RoomCaller) -> String {
    let left = state.broker.leave_all(caller.conn_id).await;
    to_json(&serde_json::json!({ "rooms": left }))
}

/// `rpc.publish {room, data}`.
pub async fn publish(
    state: &ServerState,
    caller: &RoomCaller,
    raw: Option<&str>,
) -> Result<String, RpcError> {
    let p: PublishParams<'_> = params("rpc.publish", raw, r#"{"room": "...", "data": ...}"#)?;
    let rule = state
        .broker
        .check_access(&p.room, caller.identity.as_deref())?;
    if !state.broker.is_member(&p.room, caller.conn_id) {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!("join room '{}' before publishing to it", p.room),
        ));
    }
    if !rule.publish {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!(
                "clients may not publish to room '{}'; its messages come from the server",
                p.room
            ),
        ));
    }
    let published = state.broker.publish(&p.room, &rule, p.data.get()).await?;
    Ok(format!(r#"{{"offset":{}}}"#, published.offset))
}

/// `rpc.presence {room}`.
pub async fn presence(
    state: &ServerState,
    caller: &RoomCaller,
    raw: Option<&str>,
) -> Result<String, RpcError> {
    let p: RoomParams = params("rpc.presence", raw, r#"{"room": "..."}"#)?;
    let rule = state
        .broker
        .check_access(&p.room, caller.identity.as_deref())?;
    if !rule.presence {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!("presence is off for room '{}'", p.room),
        ));
    }
    if !rule.presence_public && !state.broker.is_member(&p.room, caller.conn_id) {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!(
                "only members may see who is in room '{}': join it first",
                p.room
            ),
        ));
    }
    let members = state.broker.presence(&p.room).await;
    Ok(to_json(&serde_json::json!({ "members": members })))
}

/// Asks the plugin whose join hook covers `room` (the first plugin, and
/// its first pattern, that matches). With `required`, a room no hook
/// covers is refused.
async fn ask_join_hook(
    state: &ServerState,
    caller: &RoomCaller,
    room: &str,
    required: bool,
) -> Result<(), RpcError> {
    let user = caller.identity.as_ref().map(|i| Arc::clone(&i.user));
    let found = state.registry.snapshot().plugins.iter().find_map(|plugin| {
        plugin
            .join_patterns
            .iter()
            .find(|pattern| matches(pattern, room, user.as_deref()))
            .map(|pattern| (Arc::clone(plugin), pattern.clone()))
    });
    let Some((plugin, pattern)) = found else {
        if required {
            return Err(RpcError::new(
                ErrorCode::Forbidden,
                format!(
                    "joins to room '{room}' need a plugin's approval, and no plugin decides them"
                ),
            ));
        }
        return Ok(());
    };
    // A hook runs on a plugin thread like an action and takes a slot like
    // one (kept while it runs, even past the timeout).
    let slot = state.inflight.try_take().ok_or_else(|| {
        RpcError::new(
            ErrorCode::Overloaded,
            "the server is at its limit of running calls; retry shortly",
        )
    })?;
    let (asked, room_name, conn_id) = (Arc::clone(&plugin), room.to_owned(), caller.conn_id);
    let answer = invoke(Deadline::from_now(JOIN_HOOK_TIMEOUT), move |pending| {
        let _slot = slot;
        let args = JoinArgs {
            room: &room_name,
            pattern: &pattern,
            conn_id,
            user: user.as_deref(),
        };
        asked.ask_join(&args, pending);
    })
    .await;
    let reason = match answer {
        Ok(_) => return Ok(()),
        Err(fault @ PluginFault::Refused(_)) => fault
            .refusal_message(200)
            .unwrap_or_else(|| "no reason given".to_owned()),
        Err(PluginFault::NotAsked) => "the plugin deciding it could not be asked".to_owned(),
        Err(PluginFault::TimedOut(after)) => {
            format!("the plugin did not decide within {} s", after.as_secs())
        }
        Err(fault) => {
            tracing::error!(plugin = %plugin.name, "a join hook failed: {fault}");
            "the plugin deciding it failed".to_owned()
        }
    };
    Err(RpcError::new(
        ErrorCode::Forbidden,
        format!("joining '{room}' refused: {reason}"),
    ))
}
