//! The runtime's built-in methods (`rpc.*`), one variant each.
//!
//! Rooms (`rpc.join`, `rpc.leave`, `rpc.leave_all`, `rpc.publish`,
//! `rpc.presence`) arrive with the rooms feature; until then they answer
//! -32601 like any unknown method.

use crate::auth::TokenError;
use crate::rpc_error::{ErrorCode, RpcError};
use crate::session::Session;
use crate::state::ServerState;
use serde::Deserialize;
use serde_json::value::RawValue;

/// A built-in method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// `rpc.ping`: answers `"pong"`.
    Ping,
    /// `rpc.auth {token}`: signs the connection in (or refreshes its token).
    Auth,
    /// `rpc.actions`: the actions this connection may call.
    Actions,
}

impl Builtin {
    /// The built-in named `method`, if any.
    pub fn from_method(method: &str) -> Option<Builtin> {
        match method {
            "rpc.ping" => Some(Builtin::Ping),
            "rpc.auth" => Some(Builtin::Auth),
            "rpc.actions" => Some(Builtin::Actions),
            _ => None,
        }
    }

    /// Runs the built-in and returns its result as JSON text.
    pub fn run(
        self,
        state: &ServerState,
        session: &mut Session,
        params: Option<&RawValue>,
    ) -> Result<String, RpcError> {
        match self {
            Builtin::Ping => Ok("\"pong\"".to_owned()),
            Builtin::Actions => Ok(state
                .registry
                .snapshot()
                .actions_json(session.is_signed_in())
                .to_owned()),
            Builtin::Auth => auth(state, session, params),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthParams {
    token: String,
}

fn auth(
    state: &ServerState,
    session: &mut Session,
    params: Option<&RawValue>,
) -> Result<String, RpcError> {
    let params: AuthParams = params
        .ok_or_else(|| {
            RpcError::new(
                ErrorCode::InvalidParams,
                "rpc.auth needs params {\"token\": \"...\"}",
            )
        })
        .and_then(|raw| {
            serde_json::from_str(raw.get()).map_err(|e| {
                RpcError::new(ErrorCode::InvalidParams, format!("rpc.auth params: {e}"))
            })
        })?;
    let identity = state.keys.verify(&params.token).map_err(|e: TokenError| {
        tracing::info!(conn = session.conn_id, "rpc.auth refused: {e}");
        RpcError::new(ErrorCode::Unauthenticated, format!("token refused: {e}"))
    })?;
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
    tracing::debug!(conn = session.conn_id, user = %identity.user, "signed in");
    session.sign_in(identity);
    Ok(result)
}
