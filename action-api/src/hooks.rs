//! The types of a plugin's connection hooks: [`AuthRequest`] and
//! [`Authenticated`] for an authentication hook, [`Event`] for lifecycle
//! hooks (connect, sign-in, refusal, disconnect, error).

use serde::Serialize;
use serde_json::Value;

/// What an authentication hook is asked to judge: the token (if any) and
/// the WebSocket handshake it came with.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) headers: Value,
    pub(crate) query: Option<&'a str>,
    pub(crate) remote_addr: &'a str,
    pub(crate) conn_id: u64,
}

impl<'a> AuthRequest<'a> {
    /// The token presented (`Authorization: Bearer`, `?token=` or
    /// `rpc.auth`), if any.
    pub fn token(&self) -> Option<&'a str> {
        self.token
    }

    /// A header of the upgrade request, by case-insensitive name
    /// (repeated headers are joined with ", ").
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name.to_ascii_lowercase())?.as_str()
    }

    /// A cookie from the `Cookie` header, by name.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.header("cookie")?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// A parameter of the upgrade URL's query string (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// The peer's address, e.g. `127.0.0.1:50412`.
    pub fn remote_addr(&self) -> &'a str {
        self.remote_addr
    }

    /// The id the connection will have.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }
}

/// A successful authentication: who the connection is, and what it may do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Authenticated {
    /// The user.
    pub user: String,
    /// Scopes, as a token's `scopes` claim would give them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Rooms the connection may join, as a token's `rooms` claim would.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Connection data every action call of this connection can read
    /// ([`Context::connection_data`](crate::Context::connection_data)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// When the sign-in ends (seconds since the Unix epoch); the server
    /// closes the connection with 4002 then unless it signs in again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Authenticated {
    /// Signs `user` in with no scopes, rooms, data or expiry.
    pub fn user(user: impl Into<String>) -> Authenticated {
        Authenticated {
            user: user.into(),
            ..Authenticated::default()
        }
    }

    /// Adds scopes.
    pub fn with_scopes<S: Into<String>>(
        mut self,
        scopes: impl IntoIterator<Item = S>,
    ) -> Authenticated {
        self.scopes.extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Attaches connection data.
    pub fn with_data(mut self, data: impl Serialize) -> Authenticated {
        self.data = serde_json::to_value(data).ok();
        self
    }
}

/// The kind of a lifecycle [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A connection opened.
    Connect,
    /// A connection signed in.
    AuthSuccess,
    /// A token or credential was refused.
    AuthFailure,
    /// A connection closed.
    Disconnect,
    /// Something failed on a connection.
    Error,
}

impl EventKind {
    pub(crate) fn code(self) -> u32 {
        use crate::abi::event_kind;
        match self {
            EventKind::Connect => event_kind::CONNECT,
            EventKind::AuthSuccess => event_kind::AUTH_SUCCESS,
            EventKind::AuthFailure => event_kind::AUTH_FAILURE,
            EventKind::Disconnect => event_kind::DISCONNECT,
            EventKind::Error => event_kind::ERROR,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<EventKind> {
        [
            EventKind::Connect,
            EventKind::AuthSuccess,
            EventKind::AuthFailure,
            EventKind::Disconnect,
            EventKind::Error,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// One lifecycle event, as a hook sees it.
#[derive(Debug)]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The connection.
    pub conn_id: u64,
    /// The signed-in user, if any.
    pub user: Option<&'a str>,
    /// Details: `{"remote_addr"}` on connect, `{"reason"}` on auth failure
    /// and disconnect, `{"error"}` on error.
    pub detail: Value,
}

/// A client's request to join a room, as a join hook sees it.
#[derive(Debug)]
pub struct JoinRequest<'a> {
    /// The room.
    pub room: &'a str,
    /// The pattern (as registered) that matched it.
    pub pattern: &'a str,
    /// The connection asking.
    pub conn_id: u64,
    /// Its user, if signed in.
    pub user: Option<&'a str>,
}
