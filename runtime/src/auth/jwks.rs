//! [`JwksFile`]: a JSON Web Key Set on disk, re-read when it changes, so
//! keys can be rotated without a restart.
//!
//! The file is checked (one `stat`) at most once a second, when a token
//! needs a key: sign-ins are per connection, never per message, so no
//! watcher thread is needed. A file that stops parsing keeps the last good
//! keys in force, and the error is logged.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// How often the file's metadata is checked at most.
const RECHECK: Duration = Duration::from_secs(1);

/// Why a JWKS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Reading failed.
    #[error("could not read JWKS file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a JWKS document.
    #[error("JWKS file {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Keys by `kid`, each with the one algorithm it verifies.
pub type KeyMap = HashMap<String, (Algorithm, Arc<DecodingKey>)>;

#[derive(Debug)]
struct Loaded {
    checked: Instant,
    stamp: Option<(SystemTime, u64)>,
    keys: Arc<KeyMap>,
}

/// A JWKS file and the keys last read from it.
#[derive(Debug)]
pub struct JwksFile {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Parses a JWKS document into keys (RS256 for RSA keys, ES256 for P-256
/// keys, or the key's own `alg` when it names one of those). Keys without
/// a `kid` or of other kinds are skipped.
pub fn parse(path: &Path, text: &str) -> Result<KeyMap, JwksError> {
    let invalid = |reason: String| JwksError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let set: JwkSet = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let mut keys = KeyMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::warn!(file = %path.display(), "JWKS key without a kid skipped");
            continue;
        };
        let algorithm = match (
            &jwk.algorithm,
            jwk.common.key_algorithm.map(|a| a.to_string()),
        ) {
            (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(_), None) => Algorithm::ES256,
            (_, Some(alg)) if alg == "RS256" => Algorithm::RS256,
            (_, Some(alg)) if alg == "ES256" => Algorithm::ES256,
            (_, alg) => {
                tracing::warn!(file = %path.display(), kid, ?alg, "JWKS key skipped: only RS256 and ES256 keys are used");
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(format!("key '{kid}': {e}")))?;
        keys.insert(kid, (algorithm, Arc::new(key)));
    }
    Ok(keys)
}

impl JwksFile {
    /// Reads `path` now; a missing or invalid file is an error at start.
    pub fn open(path: &Path) -> Result<JwksFile, JwksError> {
        let text = std::fs::read_to_string(path).map_err(|source| JwksError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let keys = parse(path, &text)?;
        tracing::info!(file = %path.display(), keys = keys.len(), "JWKS loaded");
        Ok(JwksFile {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                checked: Instant::now(),
                stamp: stamp(path),
                keys: Arc::new(keys),
            }),
        })
    }

    /// The keys in force, re-reading the file if it changed.
    pub fn keys(&self) -> Arc<KeyMap> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.path);
            if now.is_some() && now != loaded.stamp {
                loaded.stamp = now;
                match std::fs::read_to_string(&self.path)
                    .map_err(|source| JwksError::Read {
                        path: self.path.clone(),
                        source,
                    })
                    .and_then(|text| parse(&self.path, &text))
                {
                    Ok(keys) => {
                        tracing::info!(file = %self.path.display(), keys = keys.len(), "JWKS reloaded");
                        loaded.keys = Arc::new(keys);
                    }
                    Err(e) => tracing::error!("{e}; keeping the previous keys"),
                }
            }
        }
        Arc::clone(&loaded.keys)
    }
}
