//! [`Config`]: every setting of `switchboard serve`, from a TOML file, with
//! environment variables (`SWITCHBOARD_*`) and flags on top.
//!
//! Each field is documented here and in the README's configuration
//! reference; the defaults make the quickstart work with no file at all.

use crate::rooms::policy::RoomRule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("could not read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("config file {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid setting {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

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

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One step of the authentication chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthStep {
    /// Verify the token as a JWT with the configured keys.
    Jwt,
    /// Ask the auth plugin's `authenticate` hook.
    Plugin,
}

impl std::str::FromStr for AuthStep {
    type Err = String;
    fn from_str(s: &str) -> Result<AuthStep, String> {
        match s {
            "jwt" => Ok(AuthStep::Jwt),
            "plugin" => Ok(AuthStep::Plugin),
            other => Err(format!("unknown auth step '{other}' (use jwt or plugin)")),
        }
    }
}

/// The server's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (HTTP and WebSocket on one port). Default
    /// `127.0.0.1:7800`; port 0 picks a free port (the log says which).
    pub listen: SocketAddr,
    /// Folder of plugin libraries to load. Default `actions`.
    pub actions: PathBuf,
    /// HS256 secret for client tokens. When no key at all is configured
    /// (no secret, public key or JWKS), `serve` makes a secret up for the
    /// run and prints a development token.
    pub jwt_secret: Option<Secret>,
    /// A file holding the HS256 secret (surrounding whitespace ignored):
    /// keeps it off the command line, where every local user can read it
    /// in `/proc/<pid>/cmdline`. Not with `jwt_secret`.
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM file with an RSA or EC (P-256) public key: accepts RS256 or
    /// ES256 tokens signed with the matching private key.
    pub jwt_public_key: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`) of RS256/ES256 public keys, chosen by
    /// the token's `kid`; re-read when the file changes.
    pub jwks_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud` (or include it in a list).
    pub jwt_audience: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 5.
    pub jwt_leeway_secs: u64,
    /// The furthest in the future a token's `exp` may be, in seconds;
    /// tokens valid for longer are refused. 0 allows any. Default 2592000
    /// (30 days).
    pub jwt_max_lifetime_secs: u64,
    /// The authenticators tried in order: `"jwt"`, `"plugin"`, or both.
    /// The first that accepts signs the connection in. Default `["jwt"]`.
    pub auth_chain: Vec<AuthStep>,
    /// The plugin whose `authenticate` hook the `"plugin"` step calls;
    /// may be left out when exactly one loaded plugin has the hook.
    pub auth_plugin: Option<String>,
    /// A connection that has not signed in after this long is closed with
    /// 4001, in milliseconds; 0 lets anonymous connections stay. Default
    /// 10000.
    pub auth_timeout_ms: u64,
    /// Most one-time (`jti`) tokens remembered at once; past it, new
    /// one-time tokens are refused until old ones expire. Default 1000000.
    pub jti_cache_max: usize,
    /// Browser origins allowed to open a WebSocket (e.g.
    /// `https://app.example.com`); empty allows any. Requests without an
    /// `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Most open WebSocket connections; past it upgrades get HTTP 503.
    /// Default: what the process's open-file limit allows, less headroom
    /// for everything else the server opens, at most 100000 (see
    /// [`crate::limits`]); a setting larger than the limit allows is
    /// lowered to that, with a warning.
    pub max_connections: Option<usize>,
    /// Most open connections that have not signed in (no token on the
    /// upgrade, no `rpc.auth` yet); past it anonymous upgrades get HTTP
    /// 503, so they can never crowd out signed-in users. Default: a
    /// quarter of `max_connections`.
    pub max_anonymous_connections: Option<usize>,
    /// Most connections that have not signed in from one address (IPv6:
    /// one /64). Default 32.
    pub max_anonymous_per_address: usize,
    /// PEM certificate chain for TLS (wss://); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS; needs `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Room rules, by name pattern, first match wins (`[[rooms]]` tables);
    /// rooms no rule matches get the defaults of [`RoomRule`].
    pub rooms: Vec<RoomRule>,
    /// Most rooms one connection may be in at once (client joins); past it
    /// `rpc.join` answers -32006. Default 100.
    pub max_rooms_per_connection: usize,
    /// Most rooms in memory at once in the whole server; rooms with no
    /// members (kept only for their history) are dropped first to make
    /// room, and past it creating a room is refused with -32006. Default
    /// 100000.
    pub max_rooms: usize,
    /// Bytes of room history kept in the whole server. Past it, the
    /// history of rooms with no members goes first, then the publishing
    /// room's oldest messages. Default 64 MiB.
    pub max_history_bytes: usize,
    /// Most rooms one connection may bring into existence per minute
    /// (joins, client or server-side, of a room that does not exist yet);
    /// past it `rpc.join` answers -32004. Default 100.
    pub max_room_creations_per_minute: u32,
    /// Deadline for an action that sets none itself, in milliseconds.
    /// Default 30000.
    pub call_timeout_ms: u64,
    /// Largest accepted message (and frame), in bytes; a larger one closes
    /// the connection with 1009. Default 1 MiB.
    pub max_message_bytes: usize,
    /// Most calls in one batch. Default 100.
    pub max_batch: usize,
    /// Most action calls running at once in the whole server; past it
    /// calls are refused with -32006. Default 1024.
    pub max_inflight_calls: usize,
    /// Most action calls running at once for one connection; past it
    /// calls are refused with -32006. Default 128.
    pub max_inflight_per_connection: usize,
    /// Frames queued for one connection's writer. Default 1024.
    pub outbound_queue: usize,
    /// Bytes queued for one connection's writer; a push past it closes
    /// the connection with 4008 (a slow consumer). A single frame larger
    /// than this still goes through an empty queue. Default 1 MiB.
    pub outbound_queue_bytes: usize,
    /// How long writing to a client may stall before the connection is
    /// dropped (a client that stopped reading), in milliseconds. Default
    /// 10000.
    pub write_timeout_ms: u64,
    /// How long shutdown waits for connections to close, in milliseconds.
    /// Default 5000.
    pub shutdown_grace_ms: u64,
    /// Where plugin copies are loaded from. Default
    /// `$TMPDIR/switchboard-shadow`.
    pub shadow_dir: Option<PathBuf>,
    /// Watch the actions folder and hot-reload plugins that change.
    /// Default true.
    pub watch: bool,
    /// How long a changed plugin file must stay unchanged (size and mtime)
    /// before it is taken, in milliseconds. Default 200.
    pub reload_debounce_ms: u64,
    /// Most generations of one plugin file kept draining or mapped at once;
    /// past it a reload is refused as busy (and reported on `/status`)
    /// until one is gone. Default 64.
    pub max_generations: usize,
    /// How long the out-of-process preflight of a plugin file may take, in
    /// milliseconds. Default 10000.
    pub preflight_timeout_ms: u64,
    /// Debugging aid: once a retired generation is unmapped, its address
    /// range stays reserved with no access (`PROT_NONE`), so a pointer the
    /// server kept into it faults at once instead of landing in whatever
    /// is mapped there next. Costs address space, not memory. Default false.
    pub reload_protect_retired: bool,
    /// Load plugins even from an actions folder (or shadow folder) that
    /// others could write to, or files owned by another user, or symlinks
    /// that leave the folder: each is then only warned about. Default
    /// false: such folders and files are refused.
    pub allow_unsafe_plugin_folder: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7800)),
            actions: PathBuf::from("actions"),
            jwt_secret: None,
            jwt_secret_file: None,
            jwt_public_key: None,
            jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            jwt_max_lifetime_secs: 30 * 24 * 3600,
            auth_chain: vec![AuthStep::Jwt],
            auth_plugin: None,
            auth_timeout_ms: 10_000,
            jti_cache_max: 1_000_000,
            allowed_origins: Vec::new(),
            max_connections: None,
            max_anonymous_connections: None,
            max_anonymous_per_address: 32,
            tls_cert: None,
            tls_key: None,
            rooms: Vec::new(),
            max_rooms_per_connection: 100,
            max_rooms: 100_000,
            max_history_bytes: 64 << 20,
            max_room_creations_per_minute: 100,
            call_timeout_ms: 30_000,
            max_message_bytes: 1 << 20,
            max_batch: 100,
            max_inflight_calls: 1024,
            max_inflight_per_connection: 128,
            outbound_queue: 1024,
            outbound_queue_bytes: 1 << 20,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            shadow_dir: None,
            watch: true,
            reload_debounce_ms: 200,
            max_generations: 64,
            preflight_timeout_ms: 10_000,
            reload_protect_retired: false,
            allow_unsafe_plugin_folder: false,
        }
    }
}

impl Config {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
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
            ("write_timeout_ms", self.write_timeout_ms as usize),
            ("max_generations", self.max_generations),
            ("preflight_timeout_ms", self.preflight_timeout_ms as usize),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be greater than 0".into(),
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

    /// [`Config::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
