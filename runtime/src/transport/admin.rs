//! Who may read the server's own state (`/status`, which the admin page
//! reads): with `admin_token` set, requests presenting
//! `Authorization: Bearer <admin_token>` (compared in constant time);
//! without one, only clients on this machine (a loopback TCP peer).
//! Refusals are counted (`/status` shows how many).

use crate::config::Secret;
use crate::transport::response::{Body, respond};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use subtle::ConstantTimeEq;

/// Admin requests refused since start.
pub static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Whether a request may read the server's state; the refusal if not.
pub fn check(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    token: Option<&Secret>,
) -> Result<(), Box<Response<Body>>> {
    let allowed = match token {
        Some(token) => presented(headers)
            .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))),
        None => peer.is_some_and(|p| p.ip().to_canonical().is_loopback()),
    };
    if allowed {
        return Ok(());
    }
    REFUSED.fetch_add(1, Ordering::Relaxed);
    let (status, message) = match token {
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            "send the admin token: Authorization: Bearer <admin_token>",
        ),
        None => (
            StatusCode::FORBIDDEN,
            "no admin_token is configured, so only clients on the server's machine may read this; \
             set admin_token to read it from elsewhere",
        ),
    };
    let body = serde_json::json!({"code": -32001, "message": message}).to_string();
    let mut response = respond(status, "application/json", body);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"switchboard admin\""),
        );
    }
    Err(Box::new(response))
}

/// The bearer token of an `Authorization` header, if exactly one.
fn presented(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.strip_prefix("Bearer ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(auth) = auth {
            map.insert(header::AUTHORIZATION, auth.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_token_is_needed_when_set_and_loopback_otherwise() {
        let token = Secret::new("admin-0123456789");
        let local: Option<SocketAddr> = Some("127.0.0.1:5000".parse().unwrap());
        let remote: Option<SocketAddr> = Some("203.0.113.9:5000".parse().unwrap());
        assert!(
            check(
                &headers(Some("Bearer admin-0123456789")),
                remote,
                Some(&token)
            )
            .is_ok()
        );
        for wrong in [
            None,
            Some("Bearer nope"),
            Some("admin-0123456789"),
            Some("Basic x"),
        ] {
            let refused = check(&headers(wrong), local, Some(&token)).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{wrong:?}");
        }
        assert!(check(&headers(None), local, None).is_ok());
        let v6: Option<SocketAddr> = Some("[::1]:5000".parse().unwrap());
        assert!(check(&headers(None), v6, None).is_ok());
        let refused = check(&headers(None), remote, None).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
}
