//! [`Config`]: every setting of `switchboard serve`, from a TOML file, with
//! environment variables (`SWITCHBOARD_*`) and flags on top.
//!
//! Each setting is defined once, below: its doc (which is also its
//! `--help` text), its flag and environment variable (clap), its TOML key
//! (serde, the field's name) and its default. [`SettingOverrides`] lays
//! the flags and environment over a config read from a file. The README's
//! configuration reference lists them all (a test checks it does).

use crate::rooms::policy::RoomRule;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

mod checks;
mod overrides;
mod proxies;
mod secret;

pub use overrides::{SecretOverrides, SettingOverrides};
pub use proxies::ProxyRange;
pub use secret::Secret;

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

/// Defines the settings struct and its `Default` from one list: each
/// field with its attributes, its type and its default value.
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> $name {
                $name { $( $field: $default, )* }
            }
        }
    };
}

settings! {
    /// The server's settings. Every field is optional in the file, in the
    /// environment and on the command line alike.
    #[derive(Debug, Clone, Deserialize, clap::Args)]
    #[serde(default, deny_unknown_fields)]
    pub struct Config {
        /// Address to listen on (HTTP and WebSocket on one port). Default
        /// `127.0.0.1:7800`; port 0 picks a free port (the log says which).
        #[arg(long, short = 'l', env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
        pub listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7800)),
        /// Folder of plugin libraries to load. Default `actions`.
        #[arg(long, short = 'a', env = "SWITCHBOARD_ACTIONS", value_name = "DIR")]
        pub actions: PathBuf = PathBuf::from("actions"),
        /// HS256 secret for client tokens, at least 16 bytes. When no key at
        /// all is configured (no secret, public key or JWKS), `serve` makes a
        /// secret up for the run and prints a development token. Prefer
        /// `--jwt-secret-file` or the environment variable: a flag is visible
        /// to every local user in the process list.
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true, value_name = "SECRET")]
        pub jwt_secret: Option<Secret> = None,
        /// A file holding the HS256 secret (surrounding whitespace ignored):
        /// keeps it off the command line, where every local user can read it
        /// in `/proc/<pid>/cmdline`. Not with `jwt_secret`.
        #[arg(long, env = "SWITCHBOARD_JWT_SECRET_FILE", conflicts_with = "jwt_secret", value_name = "FILE")]
        pub jwt_secret_file: Option<PathBuf> = None,
        /// PEM file with an RSA or EC (P-256) public key: accepts RS256 or
        /// ES256 tokens signed with the matching private key.
        #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "FILE")]
        pub jwt_public_key: Option<PathBuf> = None,
        /// JWKS file (`{"keys": [...]}`) of RS256/ES256 public keys, chosen by
        /// the token's `kid`; re-read when the file changes.
        #[arg(long, env = "SWITCHBOARD_JWKS_FILE", value_name = "FILE")]
        pub jwks_file: Option<PathBuf> = None,
        /// When set, tokens must carry this `iss`.
        #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_name = "ISS")]
        pub jwt_issuer: Option<String> = None,
        /// When set, tokens must carry this `aud` (or include it in a list).
        #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_name = "AUD")]
        pub jwt_audience: Option<String> = None,
        /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 5.
        #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY_SECS", value_name = "SECS")]
        pub jwt_leeway_secs: u64 = 5,
        /// The furthest in the future a token's `exp` may be, in seconds;
        /// tokens valid for longer are refused. 0 allows any. Default 2592000
        /// (30 days).
        #[arg(long, env = "SWITCHBOARD_JWT_MAX_LIFETIME_SECS", value_name = "SECS")]
        pub jwt_max_lifetime_secs: u64 = 30 * 24 * 3600,
        /// The authenticators tried in order: `"jwt"`, `"plugin"`, or both.
        /// The first that accepts signs the connection in. Default `["jwt"]`.
        #[arg(long, env = "SWITCHBOARD_AUTH_CHAIN", value_name = "STEPS", value_delimiter = ',')]
        pub auth_chain: Vec<AuthStep> = vec![AuthStep::Jwt],
        /// The plugin whose `authenticate` hook the `"plugin"` step calls;
        /// may be left out when exactly one loaded plugin has the hook.
        #[arg(long, env = "SWITCHBOARD_AUTH_PLUGIN", value_name = "NAME")]
        pub auth_plugin: Option<String> = None,
        /// A connection that has not signed in after this long is closed with
        /// 4001, in milliseconds; 0 lets anonymous connections stay. Default
        /// 10000.
        #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT_MS", value_name = "MS")]
        pub auth_timeout_ms: u64 = 10_000,
        /// Most one-time (`jti`) tokens remembered at once; past it, new
        /// one-time tokens are refused until old ones expire. Default 1000000.
        #[arg(long, env = "SWITCHBOARD_JTI_CACHE_MAX", value_name = "N")]
        pub jti_cache_max: usize = 1_000_000,
        /// Browser origins allowed to open a WebSocket (e.g.
        /// `https://app.example.com`); empty allows any. Requests without an
        /// `Origin` header (non-browser clients) are always allowed.
        #[arg(long, env = "SWITCHBOARD_ALLOWED_ORIGINS", value_name = "ORIGINS", value_delimiter = ',')]
        pub allowed_origins: Vec<String> = Vec::new(),
        /// The admin credential: `/status` (the admin page's data), `POST
        /// /api` and `/metrics` need `Authorization: Bearer <admin_token>`. Unset (the default): only
        /// clients on this machine (loopback) may read them. Prefer the
        /// environment variable or the config file to the flag.
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
        pub admin_token: Option<Secret> = None,
        /// Serve `/metrics` without the admin credential (for a Prometheus
        /// that cannot send one; the metrics hold no room names or users).
        /// Default false.
        #[arg(long, env = "SWITCHBOARD_METRICS_PUBLIC", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub metrics_public: bool = false,
        /// Reverse proxies (addresses or CIDR ranges, e.g. `127.0.0.1`,
        /// `10.0.0.0/8`) trusted to name the client in a `Forwarded` (RFC
        /// 7239) or, without one, an `X-Forwarded-For` header. For a
        /// connection from one of them, the client's address (plugins'
        /// `remote_addr`, and what anonymous connections are counted by) is
        /// the nearest address in that header that is not itself a trusted
        /// proxy. Empty (the default): the TCP peer is the client, and
        /// those headers are ignored.
        #[arg(long, env = "SWITCHBOARD_TRUSTED_PROXIES", value_name = "ADDRS", value_delimiter = ',')]
        pub trusted_proxies: Vec<ProxyRange> = Vec::new(),
        /// Most open WebSocket connections; past it upgrades get HTTP 503.
        /// Default: what the process's open-file limit allows, less headroom
        /// for everything else the server opens, at most 100000 (see the
        /// `limits` module); a setting larger than the limit allows is
        /// lowered to that, with a warning.
        #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: Option<usize> = None,
        /// Most open connections that have not signed in (no token on the
        /// upgrade, no `rpc.auth` yet); past it anonymous upgrades get HTTP
        /// 503, so they can never crowd out signed-in users. Default: a
        /// quarter of `max_connections`.
        #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_CONNECTIONS", value_name = "N")]
        pub max_anonymous_connections: Option<usize> = None,
        /// Most connections that have not signed in from one address (IPv6:
        /// one /64). Default 32.
        #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_PER_ADDRESS", value_name = "N")]
        pub max_anonymous_per_address: usize = 32,
        /// Most TCP connections not (yet) upgraded to a WebSocket: requests
        /// in progress, idle keep-alive connections, clients that connected
        /// and sent nothing yet. Past it a new connection is answered 503 at
        /// once and closed, so a flood of connects that never upgrade cannot
        /// take the file descriptors that open connections and new upgrades
        /// need. Default: half the files the open-file limit leaves beside
        /// `max_connections`, at least 16 and at most 4096 (see the `limits`
        /// module).
        #[arg(long, env = "SWITCHBOARD_MAX_PENDING_HANDSHAKES", value_name = "N")]
        pub max_pending_handshakes: Option<usize> = None,
        /// Most such connections from one address (IPv6: one /64); past it
        /// 503 as well. Connections from `trusted_proxies` count only
        /// towards `max_pending_handshakes`. Default 64.
        #[arg(long, env = "SWITCHBOARD_MAX_PENDING_PER_ADDRESS", value_name = "N")]
        pub max_pending_per_address: usize = 64,
        /// How long a connection has to send a request's headers (the
        /// upgrade's, or the next one on a keep-alive connection) and to
        /// finish its TLS handshake, in milliseconds; then it is closed.
        /// Default 10000.
        #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
        pub handshake_timeout_ms: u64 = 10_000,
        /// PEM certificate chain for TLS (wss://); needs `tls_key`.
        #[arg(long, env = "SWITCHBOARD_TLS_CERT", value_name = "FILE")]
        pub tls_cert: Option<PathBuf> = None,
        /// PEM private key for TLS; needs `tls_cert`.
        #[arg(long, env = "SWITCHBOARD_TLS_KEY", value_name = "FILE")]
        pub tls_key: Option<PathBuf> = None,
        /// Room rules, by name pattern, first match wins (`[[rooms]]` tables);
        /// rooms no rule matches get the defaults of [`RoomRule`].
        #[arg(skip)]
        pub rooms: Vec<RoomRule> = Vec::new(),
        /// Most rooms one connection may be in at once (client joins); past it
        /// `rpc.join` answers -32006. Default 100.
        #[arg(long, env = "SWITCHBOARD_MAX_ROOMS_PER_CONNECTION", value_name = "N")]
        pub max_rooms_per_connection: usize = 100,
        /// Most rooms in memory at once in the whole server; rooms with no
        /// members (kept only for their history) are dropped first to make
        /// room, and past it creating a room is refused with -32006. Default
        /// 100000.
        #[arg(long, env = "SWITCHBOARD_MAX_ROOMS", value_name = "N")]
        pub max_rooms: usize = 100_000,
        /// Bytes of room history kept in the whole server. Past it, the
        /// history of rooms with no members goes first, then the publishing
        /// room's oldest messages. Default 64 MiB.
        #[arg(long, env = "SWITCHBOARD_MAX_HISTORY_BYTES", value_name = "BYTES")]
        pub max_history_bytes: usize = 64 << 20,
        /// Most rooms one connection may bring into existence per minute
        /// (joins, client or server-side, of a room that does not exist yet);
        /// past it `rpc.join` answers -32004. Default 100.
        #[arg(long, env = "SWITCHBOARD_MAX_ROOM_CREATIONS_PER_MINUTE", value_name = "N")]
        pub max_room_creations_per_minute: u32 = 100,
        /// Deadline for an action that sets none itself, in milliseconds.
        /// Default 30000.
        #[arg(long, env = "SWITCHBOARD_CALL_TIMEOUT_MS", value_name = "MS")]
        pub call_timeout_ms: u64 = 30_000,
        /// Largest accepted message (and frame), in bytes; a larger one closes
        /// the connection with 1009. Default 1 MiB.
        #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", value_name = "BYTES")]
        pub max_message_bytes: usize = 1 << 20,
        /// Most calls in one batch. Default 100.
        #[arg(long, env = "SWITCHBOARD_MAX_BATCH", value_name = "N")]
        pub max_batch: usize = 100,
        /// Most action calls running at once in the whole server; past it
        /// calls are refused with -32006. Default 1024.
        #[arg(long, env = "SWITCHBOARD_MAX_INFLIGHT_CALLS", value_name = "N")]
        pub max_inflight_calls: usize = 1024,
        /// Most action calls running at once for one connection; past it
        /// calls are refused with -32006. Default 128.
        #[arg(long, env = "SWITCHBOARD_MAX_INFLIGHT_PER_CONNECTION", value_name = "N")]
        pub max_inflight_per_connection: usize = 128,
        /// Frames queued for one connection's writer. Default 1024.
        #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE", value_name = "N")]
        pub outbound_queue: usize = 1024,
        /// Bytes queued for one connection's writer; a push past it closes
        /// the connection with 4008 (a slow consumer). A single frame larger
        /// than this still goes through an empty queue. Default 1 MiB.
        #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
        pub outbound_queue_bytes: usize = 1 << 20,
        /// Messages a connection may send per second, on average (each
        /// frame counts once, a batch too); past it they are refused with
        /// -32004 before reaching any action. 0 (the default) turns the
        /// limit off: calls in flight are bounded already
        /// (`max_inflight_per_connection`); set it where one client must
        /// not take a larger share of the CPU (e.g. 100).
        #[arg(long, env = "SWITCHBOARD_MESSAGE_RATE", value_name = "N")]
        pub message_rate: u32 = 0,
        /// Messages a connection may send at once above that rate (the
        /// bucket's size). Default 200.
        #[arg(long, env = "SWITCHBOARD_MESSAGE_BURST", value_name = "N")]
        pub message_burst: u32 = 200,
        /// Messages one user's connections on this server may send per
        /// second together, on average (a user who opens many connections
        /// gets no more than one user's share); past it they are refused with
        /// -32004. 0 (the default) turns the limit off.
        #[arg(long, env = "SWITCHBOARD_USER_MESSAGE_RATE", value_name = "N")]
        pub user_message_rate: u32 = 0,
        /// Messages a user's connections may send at once above that rate.
        /// Default 400.
        #[arg(long, env = "SWITCHBOARD_USER_MESSAGE_BURST", value_name = "N")]
        pub user_message_burst: u32 = 400,
        /// `rpc.publish` calls a connection may make per second, on
        /// average; past it they are refused with -32004 (and count
        /// towards `rate_refusals_before_close`): one client's publish to
        /// a large room costs the server once per member. 0 turns the limit
        /// off. Default 100 (a 60 Hz game loop fits).
        #[arg(long, env = "SWITCHBOARD_PUBLISH_RATE", value_name = "N")]
        pub publish_rate: u32 = 100,
        /// `rpc.publish` calls a connection may make at once above that
        /// rate. Default 200.
        #[arg(long, env = "SWITCHBOARD_PUBLISH_BURST", value_name = "N")]
        pub publish_burst: u32 = 200,
        /// Refusals for rate within 10 s after which the connection is closed
        /// with 1008. Default 50.
        #[arg(long, env = "SWITCHBOARD_RATE_REFUSALS_BEFORE_CLOSE", value_name = "N")]
        pub rate_refusals_before_close: u32 = 50,
        /// A connection silent this long (no frame, no pong) is pinged, in
        /// milliseconds; 0 turns heartbeats off. Default 25000.
        #[arg(long, env = "SWITCHBOARD_PING_INTERVAL_MS", value_name = "MS")]
        pub ping_interval_ms: u64 = 25_000,
        /// How long a pinged connection has to answer (any frame) before it
        /// is dropped, in milliseconds. Default 10000.
        #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT_MS", value_name = "MS")]
        pub pong_timeout_ms: u64 = 10_000,
        /// How long writing to a client may stall before the connection is
        /// dropped (a client that stopped reading), in milliseconds. Default
        /// 10000.
        #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS", value_name = "MS")]
        pub write_timeout_ms: u64 = 10_000,
        /// How long shutdown waits for connections to close, in milliseconds.
        /// Default 5000.
        #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS", value_name = "MS")]
        pub shutdown_grace_ms: u64 = 5_000,
        /// Where plugin copies are loaded from. Default
        /// `$TMPDIR/switchboard-shadow`.
        #[arg(long, env = "SWITCHBOARD_SHADOW_DIR", value_name = "DIR")]
        pub shadow_dir: Option<PathBuf> = None,
        /// Cluster mode: the Redis through which several nodes share rooms,
        /// history, presence and pushes (e.g. `redis://127.0.0.1:6379/0`).
        /// Unset (the default): one node, rooms in memory.
        #[arg(long, env = "SWITCHBOARD_REDIS_URL", value_name = "URL")]
        pub redis_url: Option<String> = None,
        /// A folder of static files served at `/` for the paths no route
        /// takes (`/` is its `index.html`): a web app beside its socket.
        /// Default: none.
        #[arg(long, env = "SWITCHBOARD_STATIC_DIR", value_name = "DIR")]
        pub static_dir: Option<PathBuf> = None,
        /// Serve `POST /token`: the auth plugin's `authenticate` hook judges
        /// the HTTP request (cookies, headers, a `{"token"}` body) and the
        /// server answers a short-lived one-time token for the socket. Needs
        /// an auth plugin, `jwt` in `auth_chain`, and an HS256 secret.
        /// Default false.
        #[arg(long, env = "SWITCHBOARD_TOKEN_ENDPOINT", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub token_endpoint: bool = false,
        /// How long a token from `POST /token` is valid, in seconds
        /// (one-time: it opens one connection). Default 60.
        #[arg(long, env = "SWITCHBOARD_TOKEN_ENDPOINT_TTL_SECS", value_name = "SECS")]
        pub token_endpoint_ttl_secs: u64 = 60,
        /// This node's name in a cluster (logs, `/status`). Default: a
        /// random one at each start.
        #[arg(long, env = "SWITCHBOARD_NODE_ID", value_name = "NAME")]
        pub node_id: Option<String> = None,
        /// In a cluster, how long the members of a node that stopped
        /// answering (killed, cut off) stay in presence, in seconds; each
        /// then leaves with a `presence.leave`. Default 15.
        #[arg(long, env = "SWITCHBOARD_NODE_TIMEOUT_SECS", value_name = "SECS")]
        pub node_timeout_secs: u64 = 15,
        /// Watch the actions folder and hot-reload plugins that change.
        /// Default true.
        #[arg(long, env = "SWITCHBOARD_WATCH", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub watch: bool = true,
        /// How long a changed plugin file must stay unchanged (size and mtime)
        /// before it is taken, in milliseconds. Default 200.
        #[arg(long, env = "SWITCHBOARD_RELOAD_DEBOUNCE_MS", value_name = "MS")]
        pub reload_debounce_ms: u64 = 200,
        /// Most generations of one plugin file kept draining or mapped at once;
        /// past it a reload is refused as busy (and reported on `/status`)
        /// until one is gone. Default 64.
        #[arg(long, env = "SWITCHBOARD_MAX_GENERATIONS", value_name = "N")]
        pub max_generations: usize = 64,
        /// How long the out-of-process preflight of a plugin file may take, in
        /// milliseconds. Default 10000.
        #[arg(long, env = "SWITCHBOARD_PREFLIGHT_TIMEOUT_MS", value_name = "MS")]
        pub preflight_timeout_ms: u64 = 10_000,
        /// Debugging aid: once a retired generation is unmapped, its address
        /// range stays reserved with no access (`PROT_NONE`), so a pointer the
        /// server kept into it faults at once instead of landing in whatever
        /// is mapped there next. Costs address space, not memory. Default false.
        #[arg(long, env = "SWITCHBOARD_RELOAD_PROTECT_RETIRED", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub reload_protect_retired: bool = false,
        /// Load plugins even from an actions folder (or shadow folder) that
        /// others could write to, or files owned by another user, or symlinks
        /// that leave the folder: each is then only warned about. Default
        /// false: such folders and files are refused.
        #[arg(long, env = "SWITCHBOARD_ALLOW_UNSAFE_PLUGIN_FOLDER", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub allow_unsafe_plugin_folder: bool = false,
        /// Conformance testing only: serve `/autobahn`, a WebSocket that
        /// echoes every text and binary message back verbatim instead of
        /// reading JSON-RPC, through the same upgrade, limits, reader and
        /// writer as `/ws` (for the Autobahn TestSuite). Never turn it on in
        /// production. Default false.
        #[arg(long, env = "SWITCHBOARD_CONFORMANCE_ECHO", value_name = "BOOL", action = clap::ArgAction::Set)]
        pub conformance_echo: bool = false,
    }
}
