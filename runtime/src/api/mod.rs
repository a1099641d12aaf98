//! `POST /api`: the HTTP API for backends, JSON-RPC 2.0 (one request or a
//! batch) under the admin credential.
//!
//! Here: reading the body, the envelope and batches, and the HTTP
//! answer; `methods`: what each method does (publish, broadcast, send,
//! disconnect, presence, history, rooms, info, revoke), with the same
//! error codes as the socket; `orders`: the parts of `disconnect` and
//! `revoke` that every node of a cluster carries out for its own
//! connections.

mod methods;
pub mod orders;

use crate::rpc::error::{ErrorCode, RpcError};
use crate::state::ServerState;
use crate::transport::response::{Body, respond};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;

/// One request of the body.
#[derive(Debug, Deserialize)]
struct ApiRequest {
    jsonrpc: Option<String>,
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    /// Absent for a notification; any JSON value otherwise, `null` too
    /// (kept as sent).
    #[serde(default, deserialize_with = "present")]
    id: Option<Box<RawValue>>,
}

/// A field that is present, whatever its value (`null` included: a
/// request with `"id": null` is answered, JSON-RPC 2.0 section 4).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Answers one `POST /api` (the caller checked the admin credential).
pub async fn answer(state: &Arc<ServerState>, request: Request<Incoming>) -> Response<Body> {
    let max = state.config.max_message_bytes;
    let body = match http_body_util::Limited::new(request.into_body(), max)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let error = RpcError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the request body is over max_message_bytes ({max} bytes); send less at once"
                ),
            );
            return json(StatusCode::PAYLOAD_TOO_LARGE, &error_reply(None, &error));
        }
    };
    match serde_json::from_slice::<Value>(&body) {
        Err(e) => {
            let error = RpcError::new(ErrorCode::ParseError, format!("the body is not JSON: {e}"));
            json(StatusCode::OK, &error_reply(None, &error))
        }
        Ok(Value::Array(batch)) => {
            if batch.is_empty() {
                let error = RpcError::new(ErrorCode::InvalidRequest, "an empty batch".to_owned());
                return json(StatusCode::OK, &error_reply(None, &error));
            }
            if batch.len() > state.config.max_batch {
                let error = RpcError::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "a batch of {} requests is over max_batch ({}); split it",
                        batch.len(),
                        state.config.max_batch
                    ),
                );
                return json(StatusCode::OK, &error_reply(None, &error));
            }
            let mut replies = Vec::with_capacity(batch.len());
            for one in batch {
                if let Some(reply) = run(state, one).await {
                    replies.push(reply);
                }
            }
            if replies.is_empty() {
                no_content()
            } else {
                json(StatusCode::OK, &Value::Array(replies))
            }
        }
        Ok(one) => match run(state, one).await {
            Some(reply) => json(StatusCode::OK, &reply),
            None => no_content(),
        },
    }
}

/// Runs one request; its reply (`None` for a notification).
async fn run(state: &Arc<ServerState>, request: Value) -> Option<Value> {
    let request: ApiRequest = match serde_json::from_value(request) {
        Ok(request) => request,
        Err(e) => {
            let error = RpcError::new(
                ErrorCode::InvalidRequest,
                format!("not a JSON-RPC request: {e}"),
            );
            return Some(error_reply(None, &error));
        }
    };
    let (Some("2.0"), Some(method)) = (request.jsonrpc.as_deref(), request.method.as_deref())
    else {
        let error = RpcError::new(
            ErrorCode::InvalidRequest,
            "a request needs \"jsonrpc\": \"2.0\" and a \"method\"".to_owned(),
        );
        return Some(error_reply(request.id.as_deref(), &error));
    };
    let outcome = methods::call(state, method, request.params.unwrap_or(Value::Null)).await;
    crate::metrics::global().api_call(methods::label(method), outcome.as_ref().err());
    let id = request.id?;
    Some(match outcome {
        Ok(result) => serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => error_reply(Some(&id), &error),
    })
}

/// An error reply with `id` (null when it could not be read).
fn error_reply(id: Option<&RawValue>, error: &RpcError) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": error.code.code(), "message": error.message},
    })
}

fn json(status: StatusCode, value: &Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

/// The answer to notifications only.
fn no_content() -> Response<Body> {
    respond(StatusCode::NO_CONTENT, "application/json", "")
}
