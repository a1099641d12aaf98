//! Tokens: verifying the HS256 JWTs clients sign in with, and minting them
//! (for `switchboard token` and the development token `serve` prints).
//!
//! A token's `sub` claim becomes the connection's user; `exp` is required
//! and checked with a small leeway for clock skew.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 5;

/// Why a token was not accepted, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed.
    #[error("the token has expired; get a fresh one")]
    Expired,
    /// `nbf` is still in the future.
    #[error("the token is not valid yet (its nbf claim is in the future)")]
    NotYetValid,
    /// The signature does not match this server's secret.
    #[error("the token's signature does not match this server's key")]
    BadSignature,
    /// Signed with an algorithm this server does not accept.
    #[error("the token is signed with an algorithm this server does not accept (it accepts HS256)")]
    WrongAlgorithm,
    /// A claim this server needs is missing.
    #[error("the token has no '{0}' claim")]
    MissingClaim(String),
    /// Not a JWT at all.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The token could not be signed (minting only).
    #[error("could not sign the token: {0}")]
    Signing(String),
}

/// The claims as they arrive: every one optional, so a missing claim is
/// reported by name instead of as a JSON error.
#[derive(Debug, Deserialize)]
struct IncomingClaims {
    sub: Option<String>,
    exp: Option<u64>,
}

/// The claims this server writes.
#[derive(Debug, Serialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// A verified signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub user: Arc<str>,
    /// The token's `exp` (seconds since the Unix epoch).
    pub expires_at: u64,
}

impl Identity {
    /// Whether the token has expired (past the leeway) at `now_secs`.
    pub fn expired_at(&self, now_secs: u64) -> bool {
        now_secs > self.expires_at.saturating_add(LEEWAY_SECS)
    }
}

/// The server's token keys.
#[derive(Clone)]
pub struct TokenKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys")
            .field("algorithm", &"HS256")
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenKeys {
    /// Keys for an HS256 shared secret.
    pub fn hs256(secret: &[u8]) -> TokenKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks a token's signature, algorithm and time claims.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let data =
            jsonwebtoken::decode::<IncomingClaims>(token.trim(), &self.decoding, &self.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::MissingAlgorithm => TokenError::WrongAlgorithm,
                    ErrorKind::MissingRequiredClaim(claim) => {
                        TokenError::MissingClaim(claim.clone())
                    }
                    _ => TokenError::Malformed(e.to_string()),
                })?;
        let sub = data
            .claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        let exp = data
            .claims
            .exp
            .ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
        Ok(Identity {
            user: sub.into(),
            expires_at: exp,
        })
    }

    /// Signs a token for `sub` that expires after `ttl`.
    pub fn mint(&self, sub: &str, ttl: Duration) -> Result<String, TokenError> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }
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

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let keys = TokenKeys::hs256(b"secret");
        let token = keys
            .mint("alice", Duration::from_secs(60))
            .unwrap_or_default();
        assert_eq!(
            keys.verify(&token).map(|i| i.user.to_string()),
            Ok("alice".to_owned())
        );
        assert_eq!(
            TokenKeys::hs256(b"other").verify(&token).err(),
            Some(TokenError::BadSignature)
        );
        assert!(matches!(
            keys.verify("not.a.token"),
            Err(TokenError::Malformed(_))
        ));
    }
}
