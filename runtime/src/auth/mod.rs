//! Authentication: who a connection is, and how we know.
//!
//! - [`jwt`]: JWT verification (HS256 secret, RS256/ES256 public keys from
//!   a PEM file or a JWKS file), with `exp`, `nbf`, `iss`, `aud` checks.
//! - [`jwks`]: a JWKS file, re-read when it changes.
//! - [`replay`]: the one-time-token (`jti`) cache.
//! - [`chain`]: the configured chain of authenticators (JWT, then an auth
//!   plugin, or either alone) that turns a handshake into an [`Identity`].
//! - [`mint`]: signing tokens, for `switchboard token` and dev tokens.
//! - [`revocations`]: users and tokens an operator revoked (`revoke`).
//! - [`dev_secret`]: the secret a server with no key configured uses,
//!   kept in a private file `switchboard token` reads.

pub mod chain;
pub mod dev_secret;
pub mod jwks;
pub mod jwt;
pub mod mint;
pub mod replay;
pub mod revocations;

pub use chain::{Authenticator, Handshake};
pub use jwt::JwtVerifier;
pub use mint::TokenMinter;

use crate::config::AuthStep;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a token or credential was not accepted, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed.
    #[error("the token has expired; get a fresh one")]
    Expired,
    /// An operator revoked it (or its user's tokens up to its issue).
    #[error("the token was revoked; sign in again for a new one")]
    Revoked,
    /// `nbf` is still in the future.
    #[error("the token is not valid yet (its nbf claim is in the future)")]
    NotYetValid,
    /// The signature does not match.
    #[error("the token's signature does not match this server's key")]
    BadSignature,
    /// Signed with an algorithm this server does not accept.
    #[error("the token is signed with algorithm {0}, which this server does not accept ({1})")]
    WrongAlgorithm(String, String),
    /// No configured key matches the token's `kid`.
    #[error("no key with id '{0}' is configured")]
    UnknownKey(String),
    /// `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not the one this server trusts")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("the token's audience (aud) does not include this server")]
    WrongAudience,
    /// A claim this server needs is missing.
    #[error("the token has no '{0}' claim")]
    MissingClaim(String),
    /// A one-time token was used before.
    #[error("this one-time token (jti) has already been used")]
    Replayed,
    /// The one-time-token cache is full.
    #[error("too many one-time tokens are live; retry when some expire")]
    ReplayCacheFull,
    /// An `Authorization` header that is not one `Bearer <token>`.
    #[error(
        "the Authorization header must be exactly one 'Bearer <token>' (send the token that way, as ?token=, or with rpc.auth)"
    )]
    BadAuthorizationHeader,
    /// The token's header lists extensions in `crit`, which this server
    /// does not implement (RFC 7515 section 4.1.11 says to refuse it).
    #[error("the token's header has a 'crit' parameter; this server understands no JWT extensions")]
    CriticalExtension,
    /// `exp` is further away than the server accepts.
    #[error(
        "the token is valid for too long: it expires in {0} s, and this server accepts at most {1} s (jwt_max_lifetime_secs)"
    )]
    LifetimeTooLong(u64, u64),
    /// Not a JWT at all.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The auth plugin refused.
    #[error("{0}")]
    Refused(String),
    /// No authenticator could judge the request (e.g. no token and no
    /// plugin), or one failed internally.
    #[error("{0}")]
    Unavailable(String),
    /// The token could not be signed (minting only).
    #[error("could not sign the token: {0}")]
    Signing(String),
}

impl TokenError {
    /// The reason in one word, as `/metrics` labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Expired => "expired",
            TokenError::Revoked => "revoked",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongAlgorithm(..) => "wrong_algorithm",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::Replayed => "replayed",
            TokenError::ReplayCacheFull => "replay_cache_full",
            TokenError::BadAuthorizationHeader => "bad_authorization_header",
            TokenError::CriticalExtension => "critical_extension",
            TokenError::LifetimeTooLong(..) => "lifetime_too_long",
            TokenError::Malformed(_) => "malformed",
            TokenError::Refused(_) => "refused_by_plugin",
            TokenError::Unavailable(_) => "unavailable",
            TokenError::Signing(_) => "signing",
        }
    }
}

/// A signed-in connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user (a token's `sub`).
    pub user: Arc<str>,
    /// When the sign-in ends (seconds since the Unix epoch), if it does.
    pub expires_at: Option<u64>,
    /// Scopes, space-separated (a token's `scopes`/`scope` claim).
    pub scopes: Arc<str>,
    /// Rooms the connection may join (a token's `rooms` claim).
    pub rooms: Arc<[String]>,
    /// Connection data from an auth plugin, as JSON.
    pub data: Option<Arc<str>>,
    /// Which authenticator accepted it.
    pub source: AuthStep,
    /// When its token was issued (a token's `iat`), if it says.
    pub issued_at: Option<u64>,
    /// Its token's `jti`, if it has one.
    pub jti: Option<Arc<str>>,
}

impl Identity {
    /// A signed-in user with no scopes, rooms or data, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(user: &str, expires_at: Option<u64>) -> Identity {
        Identity {
            user: Arc::from(user),
            expires_at,
            scopes: Arc::from(""),
            rooms: Arc::from(Vec::new()),
            data: None,
            source: crate::config::AuthStep::Jwt,
            issued_at: None,
            jti: None,
        }
    }

    /// Whether the sign-in has ended at `now_ms` (milliseconds since the
    /// Unix epoch), allowing `leeway` seconds: it ends at `exp + leeway`
    /// exactly, to the millisecond (a token is not accepted on or after
    /// its `exp`, RFC 7519 section 4.1.4).
    pub fn expired_at(&self, now_ms: u64, leeway: u64) -> bool {
        self.expires_at
            .is_some_and(|exp| now_ms >= ends_at_ms(exp, leeway))
    }

    /// Whether the identity carries every scope in `required`.
    pub fn has_scopes(&self, required: &[String]) -> bool {
        required
            .iter()
            .all(|r| self.scopes.split_whitespace().any(|s| s == r))
    }
}

/// When a sign-in with expiry `exp` (seconds) and `leeway` seconds ends,
/// in milliseconds since the Unix epoch.
pub fn ends_at_ms(exp: u64, leeway: u64) -> u64 {
    exp.saturating_add(leeway).saturating_mul(1000)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch at `now` (a moment just read from the
/// monotonic clock): the system clock is read at most once a second per
/// thread, and in between the time is derived from `now`, so a call that
/// has read the monotonic clock anyway reads no other. A step of the system
/// clock shows within a second.
pub fn unix_millis_at(now: std::time::Instant) -> u64 {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    const REREAD: Duration = Duration::from_secs(1);
    thread_local! {
        static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| match anchor.get() {
        Some((at, millis)) if now >= at && now - at < REREAD => {
            millis + u64::try_from((now - at).as_millis()).unwrap_or(0)
        }
        _ => {
            // Read now; `now` was a moment ago (usually microseconds).
            let ago = u64::try_from(now.elapsed().as_millis()).unwrap_or(u64::MAX);
            let millis = now_millis().saturating_sub(ago);
            anchor.set(Some((now, millis)));
            millis
        }
    })
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random secret for a development run (64 hex characters).
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn unix_millis_at_follows_the_system_clock_and_the_moment_given() {
        let start = Instant::now();
        let first = unix_millis_at(start);
        let system = now_millis();
        assert!(first.abs_diff(system) < 1_000, "{first} against {system}");
        // Derived from the anchor: later moments read later, by as much.
        let later = unix_millis_at(start + Duration::from_millis(250));
        assert_eq!(later - first, 250);
        // A moment before the anchor re-reads the system clock, less the
        // time since that moment.
        if let Some(earlier) = start.checked_sub(Duration::from_secs(5)) {
            let read = unix_millis_at(earlier);
            let expected = now_millis() - 5_000;
            assert!(read.abs_diff(expected) < 1_000, "{read} against {expected}");
        }
    }
}
