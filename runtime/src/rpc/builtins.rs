//! The runtime's built-in methods (`rpc.*`), one variant each.
//!
//! The room built-ins live in [`crate::rpc::room_calls`].

use crate::auth::Identity;
use crate::lifecycle;
use crate::rpc::error::{ErrorCode, RpcError};
use crate::rpc::room_calls::{self, RoomCaller};
use crate::rpc::session::Session;
use crate::state::ServerState;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A built-in method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `rpc.ping`: answers `"pong"`.
    Ping,
    /// `rpc.auth {token}`: signs the connection in (or refreshes its token).
    Auth,
    /// `rpc.actions`: the actions this connection may call.
    Actions,
    /// `rpc.join {room, since?, epoch?}`: joins a room, replaying missed messages.
    Join,
    /// `rpc.leave {room}`: leaves a room.
    Leave,
    /// `rpc.leave_all`: leaves every room.
    LeaveAll,
    /// `rpc.publish {room, data}`: publishes to a room.
    Publish,
    /// `rpc.presence {room}`: lists a room's members.
    Presence,
    /// `rpc.subscribe {event}`: asks for a server event's pushes.
    Subscribe,
}

impl Builtin {
    /// The built-in named `method`, if any.
    pub fn from_method(method: &str) -> Option<Builtin> {
        match method {
            "rpc.ping" => Some(Builtin::Ping),
            "rpc.auth" => Some(Builtin::Auth),
            "rpc.actions" => Some(Builtin::Actions),
            "rpc.join" => Some(Builtin::Join),
            "rpc.leave" => Some(Builtin::Leave),
            "rpc.leave_all" => Some(Builtin::LeaveAll),
            "rpc.publish" => Some(Builtin::Publish),
            "rpc.presence" => Some(Builtin::Presence),
            "rpc.subscribe" => Some(Builtin::Subscribe),
            _ => None,
        }
    }

    /// Runs the built-in and returns its result as JSON text.
    pub async fn run(
        self,
        state: &ServerState,
        session: &mut Session,
        params: Option<&str>,
    ) -> Result<String, RpcError> {
        match self {
            Builtin::Ping => Ok("\"pong\"".to_owned()),
            Builtin::Actions => Ok(actions(state, session.live_identity().map(|i| &**i))),
            // Those that may wait (on an auth or join hook, or on the
            // broker) are boxed: every connection's task is as large as its
            // largest await, and these are larger than the rest.
            Builtin::Auth => Box::pin(auth(state, session, params)).await,
            Builtin::Join
            | Builtin::Leave
            | Builtin::LeaveAll
            | Builtin::Publish
            | Builtin::Presence => {
                Box::pin(self.run_room(state, &session.room_caller(), params)).await
            }
            Builtin::Subscribe => subscribe(state, session, params),
        }
    }

    /// Whether it is a room call (which a cluster broker may make wait).
    pub fn is_room_call(self) -> bool {
        matches!(
            self,
            Builtin::Join
                | Builtin::Leave
                | Builtin::LeaveAll
                | Builtin::Publish
                | Builtin::Presence
        )
    }

    /// Runs a room built-in for `caller`.
    pub async fn run_room(
        self,
        state: &ServerState,
        caller: &RoomCaller,
        params: Option<&str>,
    ) -> Result<String, RpcError> {
        match self {
            Builtin::Join => room_calls::join(state, caller, params).await,
            Builtin::Leave => room_calls::leave(state, caller, params).await,
            Builtin::LeaveAll => Ok(room_calls::leave_all(state, caller).await),
            Builtin::Publish => room_calls::publish(state, caller, params).await,
            Builtin::Presence => room_calls::presence(state, caller, params).await,
            _ => Err(RpcError::new(
                ErrorCode::Internal,
                "not a room call (a server bug)",
            )),
        }
    }
}

#[derive(Serialize)]
struct Listed<'a> {
    path: &'a str,
    plugin: &'a str,
    version: &'a str,
    generation: u64,
    public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeParams {
    event: String,
}

/// `rpc.subscribe`: the connection gets `rpc.event` pushes of `event`
/// from now on (until it closes). Signed-in connections only: the events
/// name actions.
fn subscribe(
    state: &ServerState,
    session: &Session,
    params: Option<&str>,
) -> Result<String, RpcError> {
    let params: SubscribeParams = params
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::InvalidParams,
                "rpc.subscribe needs params {\"event\": \"actions.changed\"}",
            )
        })
        .and_then(|raw| {
            serde_json::from_str(raw).map_err(|e| {
                RpcError::new(
                    ErrorCode::InvalidParams,
                    format!("rpc.subscribe params: {e}"),
                )
            })
        })?;
    if session.live_identity().is_none() {
        return Err(RpcError::new(
            ErrorCode::Unauthenticated,
            "rpc.subscribe needs a signed-in connection",
        ));
    }
    if !state.hub.subscribe_event(session.conn_id, &params.event) {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            format!(
                "no server event '{}'; events you can subscribe to: {}",
                crate::auth::jwt::clip(&params.event),
                crate::rooms::hub::SERVER_EVENTS.join(", ")
            ),
        ));
    }
    Ok(serde_json::json!({"event": params.event, "subscribed": true}).to_string())
}

/// The actions `identity` may call, sorted by path.
fn actions(state: &ServerState, identity: Option<&Identity>) -> String {
    let snapshot = state.registry.snapshot();
    let mut listed: Vec<Listed<'_>> = snapshot
        .actions()
        .filter(|a| a.public || identity.is_some_and(|i| i.has_scopes(&a.scopes)))
        .map(|a| Listed {
            path: &a.path,
            plugin: &a.plugin.name,
            version: &a.plugin.version,
            generation: a.plugin.generation,
            public: a.public,
        })
        .collect();
    listed.sort_by_key(|a| a.path);
    serde_json::to_string(&listed).unwrap_or_else(|_| "[]".to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthParams {
    token: String,
}

async fn auth(
    state: &ServerState,
    session: &mut Session,
    params: Option<&str>,
) -> Result<String, RpcError> {
    let params: AuthParams = params
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::InvalidParams,
                "rpc.auth needs params {\"token\": \"...\"}",
            )
        })
        .and_then(|raw| {
            serde_json::from_str(raw).map_err(|e| {
                RpcError::new(ErrorCode::InvalidParams, format!("rpc.auth params: {e}"))
            })
        })?;
    let conn_id = session.conn_id;
    let verdict = state
        .auth
        .authenticate(
            Some(&params.token),
            &session.handshake,
            conn_id,
            &state.registry,
        )
        .await;
    let identity = match verdict {
        Ok(Some(identity)) => identity,
        Ok(None) => return Err(RpcError::new(ErrorCode::Unauthenticated, "token refused")),
        Err(e) => {
            tracing::info!(conn = conn_id, "rpc.auth refused: {e}");
            crate::metrics::global().auth_failure(e.kind());
            let user = session.identity().map(|i| i.user.clone());
            lifecycle::emit(
                &state.registry,
                lifecycle::AUTH_FAILURE,
                conn_id,
                user.as_ref(),
                || serde_json::json!({"reason": e.to_string(), "via": "rpc.auth"}),
            );
            return Err(RpcError::new(
                ErrorCode::Unauthenticated,
                format!("token refused: {e}"),
            ));
        }
    };
    if let Some(current) = session.identity()
        && current.user != identity.user
    {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!(
                "this connection is signed in as '{}'; a token for '{}' cannot replace it (open a new connection)",
                current.user, identity.user
            ),
        ));
    }
    let result =
        serde_json::json!({"user": &*identity.user, "expires_at": identity.expires_at}).to_string();
    tracing::debug!(conn = conn_id, user = %identity.user, "signed in");
    lifecycle::emit(
        &state.registry,
        lifecycle::AUTH_SUCCESS,
        conn_id,
        Some(&identity.user),
        || serde_json::json!({"via": "rpc.auth"}),
    );
    if let Some(handle) = state.hub.set_user(conn_id, Arc::clone(&identity.user)) {
        session.handle = Some(handle);
    }
    session.sign_in(identity);
    Ok(result)
}
