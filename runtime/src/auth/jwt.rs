//! [`JwtVerifier`]: checks a JWT's signature with the configured key for
//! its algorithm (HS256 secret; RS256/ES256 public key from a PEM file or,
//! by `kid`, from a JWKS file), then `exp`, `nbf`, `iss` and `aud`.
//!
//! Only HS256, RS256 and ES256 are accepted, and only where a key of that
//! kind is configured: `alg: none`, an HMAC token against a public key, or
//! any other algorithm is refused before any signature check.

use super::jwks::{JwksError, JwksFile};
use super::{Identity, TokenError, ends_at_ms, now_millis, now_secs};
use crate::config::{AuthStep, Config};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM file could not be read.
    #[error("could not read public key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM file holds no RSA or EC public key.
    #[error("{path} holds no RSA or EC (P-256) public key in PEM form")]
    NotAKey {
        /// The file.
        path: PathBuf,
    },
    /// The JWKS file is unusable.
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// The claims as they arrive: every one optional, so a missing claim is
/// reported by name instead of as a JSON error.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    scopes: Option<ScopeList>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
}

/// A `scopes` claim: a list, or one space-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScopeList {
    List(Vec<String>),
    Text(String),
}

/// A verified token: the identity, and its `jti` if it is a one-time token.
#[derive(Debug)]
pub struct Verified {
    /// Who.
    pub identity: Identity,
    /// The token's `jti`.
    pub jti: Option<String>,
}

/// Verifies tokens against the configured keys and claims.
#[derive(Debug)]
pub struct JwtVerifier {
    secret: Option<DecodingKey>,
    public: Option<(Algorithm, DecodingKey)>,
    jwks: Option<JwksFile>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    /// The furthest `exp` may be from now, in seconds; `None`: no limit.
    max_lifetime: Option<u64>,
}

impl JwtVerifier {
    /// Builds the verifier from the configuration (reading key files).
    pub fn from_config(config: &Config) -> Result<JwtVerifier, KeyError> {
        let public = match &config.jwt_public_key {
            Some(path) => Some(read_public_key(path)?),
            None => None,
        };
        let jwks = config
            .jwks_file
            .as_deref()
            .map(JwksFile::open)
            .transpose()?;
        Ok(JwtVerifier {
            secret: config
                .jwt_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            public,
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway_secs,
            max_lifetime: (config.jwt_max_lifetime_secs > 0)
                .then_some(config.jwt_max_lifetime_secs),
        })
    }

    /// The algorithms a token may use, for messages.
    fn accepted(&self) -> String {
        let mut names = Vec::new();
        if self.secret.is_some() {
            names.push("HS256");
        }
        if let Some((alg, _)) = &self.public {
            names.push(if *alg == Algorithm::RS256 {
                "RS256"
            } else {
                "ES256"
            });
        }
        if self.jwks.is_some() {
            names.push("RS256/ES256 by kid");
        }
        if names.is_empty() {
            "none configured".to_owned()
        } else {
            format!("it accepts {}", names.join(", "))
        }
    }

    /// Checks a token's signature, algorithm and claims.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::Json(_) => {
                TokenError::WrongAlgorithm(clip(&algorithm_name(token)), self.accepted())
            }
            _ => TokenError::Malformed(clip(&e.to_string())),
        })?;
        if header.crit.is_some() {
            return Err(TokenError::CriticalExtension);
        }
        let wrong = || TokenError::WrongAlgorithm(format!("{:?}", header.alg), self.accepted());
        let key: Arc<DecodingKey>;
        let key_ref: &DecodingKey = match header.alg {
            Algorithm::HS256 => self.secret.as_ref().ok_or_else(wrong)?,
            Algorithm::RS256 | Algorithm::ES256 => match (&header.kid, &self.jwks, &self.public) {
                (Some(kid), Some(jwks), _) => {
                    let keys = jwks.keys();
                    let (alg, found) = keys
                        .get(kid)
                        .ok_or_else(|| TokenError::UnknownKey(clip(kid)))?;
                    if *alg != header.alg {
                        return Err(wrong());
                    }
                    key = Arc::clone(found);
                    &key
                }
                (_, _, Some((alg, public))) if *alg == header.alg => public,
                (None, Some(_), _) => return Err(TokenError::MissingClaim("kid (header)".into())),
                _ => return Err(wrong()),
            },
            _ => return Err(wrong()),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely
        // correct when present.
        let mut required = vec!["exp", "sub"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, key_ref, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                    ErrorKind::InvalidAudience => TokenError::WrongAudience,
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::MissingAlgorithm => wrong(),
                    ErrorKind::MissingRequiredClaim(claim) => {
                        TokenError::MissingClaim(claim.clone())
                    }
                    _ => TokenError::Malformed(clip(&e.to_string())),
                }
            })?;
        let claims = data.claims;
        let user = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::MissingClaim("sub".into()))?;
        let expires_at = claims
            .exp
            .ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
        // The library compares whole seconds with the leeway; a sign-in
        // ends at `exp + leeway` to the millisecond, as the live check does.
        if now_millis() >= ends_at_ms(expires_at, self.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(max) = self.max_lifetime {
            let left = expires_at.saturating_sub(now_secs());
            if left > max {
                return Err(TokenError::LifetimeTooLong(left, max));
            }
        }
        let mut scopes: Vec<String> = match claims.scopes {
            Some(ScopeList::List(list)) => list,
            Some(ScopeList::Text(text)) => text.split_whitespace().map(str::to_owned).collect(),
            None => Vec::new(),
        };
        scopes.extend(
            claims
                .scope
                .iter()
                .flat_map(|s| s.split_whitespace().map(str::to_owned)),
        );
        Ok(Verified {
            identity: Identity {
                user: user.into(),
                expires_at: Some(expires_at),
                scopes: scopes.join(" ").into(),
                rooms: claims.rooms.into(),
                data: None,
                source: AuthStep::Jwt,
                issued_at: claims.iat,
                jti: claims.jti.as_deref().map(Arc::from),
            },
            jti: claims.jti,
        })
    }

    /// Seconds of clock skew tolerated.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }
}

/// Text from a token (a `kid`, an `alg`, a parser's complaint) made safe to
/// log and echo: at most 64 characters, control characters escaped.
pub(crate) fn clip(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Best-effort name of the `alg` a token's header claims, for messages
/// about algorithms this server does not know (such as `none`).
fn algorithm_name(token: &str) -> String {
    #[derive(Deserialize)]
    struct Alg {
        alg: Option<String>,
    }
    use base64::Engine;
    token
        .split('.')
        .next()
        .and_then(|h| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(h.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<Alg>(&bytes).ok())
        .and_then(|a| a.alg)
        .map_or_else(|| "unknown".to_owned(), |alg| format!("'{alg}'"))
}

fn read_public_key(path: &std::path::Path) -> Result<(Algorithm, DecodingKey), KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    Err(KeyError::NotAKey {
        path: path.to_path_buf(),
    })
}
