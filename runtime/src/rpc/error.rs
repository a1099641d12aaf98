//! [`RpcError`]: every refusal the runtime itself sends a client, with the
//! protocol's error codes in one place.

use std::fmt;

/// The error codes of the wire protocol (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// -32700: the frame is not JSON.
    ParseError,
    /// -32600: JSON, but not a JSON-RPC request.
    InvalidRequest,
    /// -32601: no such action, or not visible to this connection.
    MethodNotFound,
    /// -32602: the params do not fit.
    InvalidParams,
    /// -32603: something failed inside the server.
    Internal,
    /// -32001: the action needs a signed-in connection.
    Unauthenticated,
    /// -32002: signed in, but not allowed.
    Forbidden,
    /// -32003: the action ran past its deadline.
    Timeout,
    /// -32004: rate limited.
    RateLimited,
    /// -32005: the action failed (it panicked, or its plugin went away).
    ActionFailed,
    /// -32006: the server sheds this call.
    Overloaded,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::Unauthenticated => -32001,
            ErrorCode::Forbidden => -32002,
            ErrorCode::Timeout => -32003,
            ErrorCode::RateLimited => -32004,
            ErrorCode::ActionFailed => -32005,
            ErrorCode::Overloaded => -32006,
        }
    }
}

/// A refusal from the runtime: a protocol code and a sentence a person can
/// act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// The protocol code.
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.code())
    }
}

impl std::error::Error for RpcError {}
