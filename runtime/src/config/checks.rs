//! Reading a [`Config`] from its file, the checks serde cannot make, and
//! its durations.

use super::{Config, ConfigError};
use std::path::Path;
use std::time::Duration;

/// The most permits a tokio semaphore (and so a bounded channel) holds.
const MAX_PERMITS: usize = tokio::sync::Semaphore::MAX_PERMITS;

impl Config {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses a settings file's text; missing keys take their defaults.
    /// What [`Config::from_file`] does once the file is read (and what the
    /// settings fuzz target feeds arbitrary text to).
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("call_timeout_ms", self.call_timeout_ms as usize),
            ("max_message_bytes", self.max_message_bytes),
            ("max_batch", self.max_batch),
            ("max_inflight_calls", self.max_inflight_calls),
            (
                "max_inflight_per_connection",
                self.max_inflight_per_connection,
            ),
            ("outbound_queue", self.outbound_queue),
            ("outbound_queue_bytes", self.outbound_queue_bytes),
            ("max_rooms", self.max_rooms),
            (
                "max_room_creations_per_minute",
                self.max_room_creations_per_minute as usize,
            ),
            ("max_anonymous_per_address", self.max_anonymous_per_address),
            ("max_pending_per_address", self.max_pending_per_address),
            ("handshake_timeout_ms", self.handshake_timeout_ms as usize),
            (
                "max_pending_handshakes",
                self.max_pending_handshakes.unwrap_or(1),
            ),
            ("write_timeout_ms", self.write_timeout_ms as usize),
            ("max_generations", self.max_generations),
            ("preflight_timeout_ms", self.preflight_timeout_ms as usize),
            ("node_timeout_secs", self.node_timeout_secs as usize),
            (
                "token_endpoint_ttl_secs",
                self.token_endpoint_ttl_secs as usize,
            ),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        // Each becomes a tokio semaphore or channel bound, which panics past
        // its maximum: at start (the server's call slots) or in every
        // connection's task (found by the settings fuzz target).
        let bounded = [
            ("max_inflight_calls", self.max_inflight_calls),
            (
                "max_inflight_per_connection",
                self.max_inflight_per_connection,
            ),
            ("outbound_queue", self.outbound_queue),
        ];
        for (field, value) in bounded {
            if value > MAX_PERMITS {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("must be at most {MAX_PERMITS}"),
                });
            }
        }
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return Err(ConfigError::Invalid {
                field: "jwt_secret",
                reason: "must be at least 16 bytes long".into(),
            });
        }
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return Err(ConfigError::Invalid {
                field: "jwt_secret_file",
                reason: "set jwt_secret or jwt_secret_file, not both".into(),
            });
        }
        if self.max_connections == Some(0) {
            return Err(ConfigError::Invalid {
                field: "max_connections",
                reason: "must be greater than 0".into(),
            });
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid {
                field: "tls_cert",
                reason: "tls_cert and tls_key must be set together".into(),
            });
        }
        if self.auth_chain.is_empty() {
            return Err(ConfigError::Invalid {
                field: "auth_chain",
                reason: "must name at least one step (jwt, plugin)".into(),
            });
        }
        Ok(())
    }

    /// [`Config::auth_timeout_ms`] as a duration; `None` when disabled.
    pub fn auth_timeout(&self) -> Option<Duration> {
        (self.auth_timeout_ms > 0).then(|| Duration::from_millis(self.auth_timeout_ms))
    }

    /// [`Config::call_timeout_ms`] as a duration.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// [`Config::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// [`Config::handshake_timeout_ms`] as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Config::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings fuzz target's find: these validated, then the server
    /// panicked building its call slots, or every connection's task
    /// panicked building its queue.
    #[test]
    fn bounds_past_what_tokio_holds_are_refused() {
        for field in [
            "max_inflight_calls",
            "max_inflight_per_connection",
            "outbound_queue",
        ] {
            let at_most = Config::from_toml(&format!("{field} = {MAX_PERMITS}"));
            assert!(
                at_most.is_ok_and(|c| c.validate().is_ok()),
                "{field} = {MAX_PERMITS} should be accepted"
            );
            let past = Config::from_toml(&format!("{field} = {}", MAX_PERMITS + 1));
            assert!(
                matches!(
                    past.map(|c| c.validate()),
                    Ok(Err(ConfigError::Invalid { field: f, .. })) if f == field
                ),
                "{field} past the maximum should be refused"
            );
        }
    }
}
