//! `POST /token` (setting `token_endpoint`): a web page's way to a socket
//! token without handling credentials itself. The auth plugin's
//! `authenticate` hook judges the HTTP request as it would a handshake
//! (its cookies and headers, and a `token` in a JSON body if sent); the
//! server answers a short-lived one-time token (`jti`) for that user,
//! which the page's socket signs in with (`?token=`).
//!
//! The answer carries no CORS header: only pages of the server's own
//! origin (or a proxy in front of it) can read it; a request from an
//! origin outside `allowed_origins` is refused outright.

use crate::auth::mint::NewToken;
use crate::auth::{Handshake, TokenMinter};
use crate::state::ServerState;
use crate::transport::response::{Body, respond};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::time::Duration;

/// The largest request body read (a JSON object with a token at most).
const MAX_BODY: usize = 16 * 1024;

/// Answers one `POST /token`.
pub async fn answer(
    state: &ServerState,
    request: Request<Incoming>,
    client: Option<SocketAddr>,
) -> Response<Body> {
    let Some(minter) = state.auth.endpoint_minter() else {
        return refuse(
            StatusCode::NOT_FOUND,
            -32601,
            "this server has no token endpoint (set token_endpoint = true)",
        );
    };
    if let Err(response) =
        crate::transport::handshake::check_origin(request.headers(), &state.config.allowed_origins)
    {
        return *response;
    }
    let headers_json = crate::transport::http::headers_json(request.headers());
    let query = request.uri().query().map(str::to_owned);
    let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                "the request body is over 16 KiB; send at most {\"token\": \"...\"}",
            );
        }
    };
    let token = match token_in(&body) {
        Ok(token) => token,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, -32600, message),
    };
    let handshake = Handshake {
        headers_json,
        query,
        remote_addr: client.map(|a| a.to_string()).unwrap_or_default(),
    };
    let identity = match state
        .auth
        .judge_request(token.as_deref(), &handshake, &state.registry)
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!("token endpoint refused a request: {e}");
            return refuse(StatusCode::UNAUTHORIZED, -32001, &format!("no token: {e}"));
        }
    };
    let ttl = Duration::from_secs(state.config.token_endpoint_ttl_secs);
    match mint(minter, state, &identity, ttl) {
        Ok(token) => {
            let expires_at = crate::auth::now_secs() + ttl.as_secs();
            let body = serde_json::json!({"token": token, "expires_at": expires_at}).to_string();
            let mut response = respond(StatusCode::OK, "application/json", body);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            &format!("could not sign a token: {e}"),
        ),
    }
}

/// The optional `{"token": "..."}` of a request body.
fn token_in(body: &[u8]) -> Result<Option<String>, &'static str> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Asked {
        token: Option<String>,
    }
    serde_json::from_slice::<Asked>(body)
        .map(|asked| asked.token)
        .map_err(|_| "the body must be empty or {\"token\": \"...\"}")
}

/// A one-time token for `identity`, as the server's JWT step accepts it.
fn mint(
    minter: &TokenMinter,
    state: &ServerState,
    identity: &crate::auth::Identity,
    ttl: Duration,
) -> Result<String, crate::auth::TokenError> {
    let jti = crate::auth::random_secret()
        .map_err(|e| crate::auth::TokenError::Signing(e.to_string()))?;
    let claims = NewToken {
        sub: identity.user.to_string(),
        scopes: identity
            .scopes
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        rooms: identity.rooms.to_vec(),
        jti: Some(jti),
        iss: state.config.jwt_issuer.clone(),
        aud: state.config.jwt_audience.clone(),
    };
    minter.mint(&claims, ttl)
}

/// A refusal, as JSON with a protocol code.
fn refuse(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut response = respond(status, "application/json", body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
