//! [`Secret`], a setting never printed, and reading the JWT secret from
//! its file.

use super::{Config, ConfigError};
use serde::Deserialize;

/// A secret setting: usable, but never printed (its `Debug` is redacted),
/// so it cannot reach a log through a struct that contains it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Config {
    /// Reads `jwt_secret_file` into `jwt_secret` (leading and trailing
    /// whitespace, such as the newline an editor adds, is not part of it).
    /// Returns a warning to log when users other than the owner can read
    /// the file.
    pub fn read_secret_file(&mut self) -> Result<Option<String>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(path) = self.jwt_secret_file.take() else {
            return Ok(None);
        };
        let read_error = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        let text = std::fs::read_to_string(&path).map_err(read_error)?;
        let mode = std::fs::metadata(&path)
            .map_err(read_error)?
            .permissions()
            .mode();
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(ConfigError::Invalid {
                field: "jwt_secret_file",
                reason: format!(
                    "{} holds {} bytes; a secret must be at least 16 bytes long",
                    path.display(),
                    secret.len()
                ),
            });
        }
        self.jwt_secret = Some(Secret::new(secret));
        Ok((mode & 0o077 != 0).then(|| {
            format!(
                "the JWT secret file {} can be read by other users (mode {:04o}); chmod 600 it",
                path.display(),
                mode & 0o7777
            )
        }))
    }

    /// Whether any JWT verification key is configured.
    pub fn has_jwt_keys(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || self.jwt_public_key.is_some()
            || self.jwks_file.is_some()
    }
}
