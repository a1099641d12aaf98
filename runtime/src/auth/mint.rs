//! [`TokenMinter`]: signs tokens, with the server's HS256 secret or an
//! RS256/ES256 private key, for `switchboard token` and the development
//! token `serve` prints.

use super::{TokenError, now_secs};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::time::Duration;

/// The claims of a minted token.
#[derive(Debug, Default, Serialize)]
pub struct NewToken {
    /// The user.
    pub sub: String,
    /// Scopes (the `scopes` claim), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Rooms (the `rooms` claim), if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// A one-time id: such a token opens at most one connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

#[derive(Serialize)]
struct Signed<'a> {
    #[serde(flatten)]
    claims: &'a NewToken,
    exp: u64,
    iat: u64,
}

/// A signing key and its algorithm.
pub struct TokenMinter {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenMinter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// Signs with an HS256 shared secret.
    pub fn hs256(secret: &[u8]) -> TokenMinter {
        TokenMinter {
            key: EncodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
            kid: None,
        }
    }

    /// Signs with a PEM private key: RSA keys sign RS256, EC (P-256) keys
    /// ES256. `kid`, if given, goes in the header (for JWKS lookups).
    pub fn from_private_pem(pem: &[u8], kid: Option<String>) -> Result<TokenMinter, TokenError> {
        let (key, algorithm) = if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            (key, Algorithm::ES256)
        } else {
            return Err(TokenError::Signing(
                "the key file holds no RSA or EC (P-256) private key in PEM form".into(),
            ));
        };
        Ok(TokenMinter {
            key,
            algorithm,
            kid,
        })
    }

    /// Signs a token with these claims, valid for `ttl` from now.
    pub fn mint(&self, claims: &NewToken, ttl: Duration) -> Result<String, TokenError> {
        let now = now_secs();
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&self.kid);
        let signed = Signed {
            claims,
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
        };
        jsonwebtoken::encode(&header, &signed, &self.key)
            .map_err(|e| TokenError::Signing(e.to_string()))
    }

    /// A plain token for `sub`, valid for `ttl`.
    pub fn mint_for(&self, sub: &str, ttl: Duration) -> Result<String, TokenError> {
        let claims = NewToken {
            sub: sub.to_owned(),
            ..NewToken::default()
        };
        self.mint(&claims, ttl)
    }
}
