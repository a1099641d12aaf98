//! [`ActionError`]: the typed refusal an action returns to its caller.

use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// A refusal an action sends back as the JSON-RPC `error` object.
///
/// Use any code outside -32768..=-32000 for the application's own errors
/// (the protocol reserves that range); [`ActionError::invalid_params`] is
/// the one reserved code an action is expected to use. The host replaces
/// any other reserved code with -32603 so clients can trust the table in
/// the protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionError {
    /// The error code.
    pub code: i64,
    /// A short sentence a person can act on.
    pub message: String,
    /// Optional structured detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ActionError {
    /// JSON-RPC's "invalid params" code.
    pub const INVALID_PARAMS: i64 = -32602;
    /// JSON-RPC's "internal error" code.
    pub const INTERNAL: i64 = -32603;

    /// An error with `code` and `message` and no data.
    pub fn new(code: i64, message: impl Into<String>) -> ActionError {
        ActionError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The params did not fit what the action expects (-32602).
    pub fn invalid_params(message: impl Into<String>) -> ActionError {
        ActionError::new(Self::INVALID_PARAMS, message)
    }

    /// Something failed inside the action (-32603).
    pub fn internal(message: impl Into<String>) -> ActionError {
        ActionError::new(Self::INTERNAL, message)
    }

    /// Attaches structured `data`, serialized with serde. A value that
    /// cannot be serialized is replaced by its error text.
    pub fn with_data(mut self, data: impl Serialize) -> ActionError {
        self.data =
            Some(serde_json::to_value(data).unwrap_or_else(|e| Value::String(e.to_string())));
        self
    }

    /// Serializes the error object; never fails.
    pub(crate) fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"code":-32603,"message":"the action's error could not be serialized"}"#.to_vec()
        })
    }
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for ActionError {}
