//! A JSON-RPC reply as a client reads it, for the targets that check the
//! replies the server builds (`rpc_frame`, `dispatch`). Parsed with raw
//! values, not into a `Value`: an id or result such as `1e999` is JSON,
//! but no `f64`.

use serde::Deserialize;
use serde_json::value::RawValue;

/// A reply as sent: the id as it was spliced in, the result as the action
/// gave it, the error's code and message.
#[derive(Deserialize)]
#[allow(dead_code, reason = "each target reads the fields it checks")]
pub struct Reply<'a> {
    pub jsonrpc: &'a str,
    #[serde(borrow)]
    pub id: &'a RawValue,
    #[serde(borrow, default, deserialize_with = "present")]
    pub result: Option<&'a RawValue>,
    #[serde(default)]
    pub error: Option<ErrorObject>,
}

/// A member that is there, whatever its value (`null` too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A reply's `error`: an integer code and a message, as protocol.md says.
#[derive(Deserialize)]
#[allow(dead_code, reason = "each target reads the fields it checks")]
pub struct ErrorObject {
    pub code: i64,
    pub message: String,
}
