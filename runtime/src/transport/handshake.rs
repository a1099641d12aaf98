//! Admission checks on the WebSocket upgrade request, before any token is
//! looked at: allowed origins (403) and the connection limit (503).
//!
//! The origin check stops cross-site WebSocket hijacking: browsers let any
//! page open a WebSocket to any server and attach that server's cookies,
//! but they always say which page asked, in `Origin`. Requests without
//! `Origin` come from non-browser clients, which no page can drive, so they
//! pass.

use crate::state::ServerState;
use crate::transport::response::{Body, text};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

/// The longest origin quoted back in a refusal or the log.
const MAX_QUOTED: usize = 200;

/// Admits an upgrade request, or returns the response that refuses it:
/// 403 for an `Origin` that `allowed_origins` does not list, then 503 when
/// `max_connections` connections are open.
///
/// The connection count includes only upgraded connections, so a burst of
/// upgrades admitted together may pass the limit by the number still in
/// flight between this check and their upgrade.
pub fn admit(headers: &HeaderMap, state: &ServerState) -> Result<(), Box<Response<Body>>> {
    check_origin(headers, &state.config.allowed_origins)?;
    let open = state.connections();
    if open >= state.limits.max_connections {
        tracing::debug!(
            open,
            max_connections = state.limits.max_connections,
            "upgrade refused: connection limit reached"
        );
        return Err(Box::new(at_capacity()));
    }
    Ok(())
}

/// The 503 for an upgrade past `max_connections`: `Retry-After: 1` tells
/// well-behaved clients to back off briefly instead of hammering.
pub fn at_capacity() -> Response<Body> {
    let mut response = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server has reached its connection limit; retry in a moment\n",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The 503 for an upgrade without a token when the connections that have
/// not signed in are at their bound (in all, or from this address).
pub fn anonymous_full(full: &crate::anonymous::SlotsFull) -> Response<Body> {
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, format!("{full}\n"));
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Refuses with 403 when `allowed` is not empty and an `Origin` header is
/// not in it.
pub fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), Box<Response<Body>>> {
    if allowed.is_empty() {
        return Ok(());
    }
    for value in headers.get_all(header::ORIGIN) {
        let Ok(origin) = value.to_str() else {
            return Err(Box::new(forbidden("(an Origin that is not readable text)")));
        };
        if !allowed
            .iter()
            .any(|pattern| origin_matches(pattern, origin))
        {
            let quoted = quote(origin);
            tracing::info!(origin = %quoted, "upgrade refused: origin not allowed");
            return Err(Box::new(forbidden(&quoted)));
        }
    }
    Ok(())
}

fn forbidden(origin: &str) -> Response<Body> {
    let mut response = text(
        StatusCode::FORBIDDEN,
        format!(
            "origin {origin} may not open a WebSocket on this server. To allow it, add it \
             to allowed_origins in the config file, or to --allowed-origins or \
             SWITCHBOARD_ALLOWED_ORIGINS (comma-separated; \"*\" allows any origin, \
             \"https://*.example.com\" any subdomain of example.com)\n"
        ),
    );
    // The body quotes a request header: never let a browser sniff it as HTML.
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `origin` cut to [`MAX_QUOTED`] characters.
fn quote(origin: &str) -> String {
    match origin.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{}...", &origin[..end]),
        None => origin.to_owned(),
    }
}

/// Whether `origin` (an `Origin` header) matches one `allowed_origins`
/// entry: `*` (any), `scheme://*.domain[:port]` (any subdomain of domain,
/// at any depth, but not domain itself) or `scheme://host[:port]`.
/// Comparison is ASCII case-insensitive, and a port that is the scheme's
/// default, or a trailing `/` on the entry, makes no difference.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    let pattern = pattern.trim();
    if pattern == "*" {
        return true;
    }
    let origin = normalize(origin);
    match pattern.split_once("://*.") {
        Some((scheme, domain)) => {
            let suffix = normalize(&format!("{scheme}://{domain}"));
            let Some((scheme, suffix)) = suffix.split_once("://") else {
                return false;
            };
            let Some(host) = origin
                .strip_prefix(scheme)
                .and_then(|rest| rest.strip_prefix("://"))
                .and_then(|rest| rest.strip_suffix(suffix))
                .and_then(|rest| rest.strip_suffix('.'))
            else {
                return false;
            };
            is_subdomain_labels(host)
        }
        None => normalize(pattern) == origin,
    }
}

/// `scheme://host[:port]` lowercased, without a trailing `/` and without
/// the port when it is the scheme's default. Anything else (`null`, say)
/// is only lowercased.
fn normalize(origin: &str) -> String {
    let lower = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return lower;
    };
    let default_port = match scheme {
        "https" | "wss" => ":443",
        "http" | "ws" => ":80",
        _ => return lower,
    };
    match authority.strip_suffix(default_port) {
        // `[::1]:443` keeps its brackets; `host:8443` is left alone since
        // only an exact `:443` suffix is stripped.
        Some(host) if !host.is_empty() => format!("{scheme}://{host}"),
        _ => lower,
    }
}

/// Whether `host` is one or more DNS labels (`a`, `a.b`, `x-1.y`).
fn is_subdomain_labels(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_entries_ignore_case_default_ports_and_a_trailing_slash() {
        let p = "https://App.Example.com/";
        assert!(origin_matches(p, "https://app.example.com"));
        assert!(origin_matches(p, "HTTPS://APP.EXAMPLE.COM"));
        assert!(origin_matches(p, "https://app.example.com:443"));
        assert!(!origin_matches(p, "http://app.example.com"));
        assert!(!origin_matches(p, "https://app.example.com:8443"));
        assert!(!origin_matches(p, "https://app.example.com.evil.net"));
        assert!(!origin_matches(p, "https://evil.app.example.com"));
        assert!(!origin_matches(p, "null"));
        assert!(origin_matches(
            "http://localhost:3000",
            "http://localhost:3000"
        ));
        assert!(!origin_matches(
            "http://localhost:3000",
            "http://localhost:30000"
        ));
        assert!(origin_matches("http://[::1]:8080", "http://[::1]:8080"));
    }

    #[test]
    fn star_matches_anything() {
        assert!(origin_matches("*", "https://anything.example"));
        assert!(origin_matches("*", "null"));
    }

    #[test]
    fn wildcard_entries_match_subdomains_only() {
        let p = "https://*.example.com";
        assert!(origin_matches(p, "https://a.example.com"));
        assert!(origin_matches(p, "https://A.b-2.Example.com"));
        assert!(origin_matches(p, "https://a.example.com:443"));
        assert!(!origin_matches(p, "https://example.com"));
        assert!(!origin_matches(p, "https://.example.com"));
        assert!(!origin_matches(p, "https://a..example.com"));
        assert!(!origin_matches(p, "https://evilexample.com"));
        assert!(!origin_matches(p, "http://a.example.com"));
        assert!(!origin_matches(p, "https://a.example.com:8443"));
        assert!(!origin_matches(p, "https://a.example.com.evil.net"));
        assert!(!origin_matches(p, "https://user@a.example.com"));
        let p = "http://*.example.com:8080";
        assert!(origin_matches(p, "http://a.example.com:8080"));
        assert!(!origin_matches(p, "http://a.example.com"));
    }

    #[test]
    fn long_origins_are_cut_when_quoted() {
        let long = "x".repeat(1000);
        assert_eq!(quote(&long).len(), MAX_QUOTED + 3);
        assert_eq!(quote("https://a.b"), "https://a.b");
    }
}
