//! The command line: every subcommand and flag (clap). What the flags
//! mean lives in the library's [`switchboard::config::Config`] and in the
//! README; here they are only parsed.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Switchboard: call native Rust actions over a WebSocket, in JSON-RPC 2.0.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Load the plugins in a folder and serve them on one port
    /// (GET /ws for the WebSocket, /healthz, /status).
    Serve(Box<ServeArgs>),
    /// Serve, and rebuild plugin crates on save: a changed crate is built
    /// with cargo and hot-reloaded; on a compiler error the old build keeps
    /// serving.
    ///
    /// Watches the `actions/*` crates of the current workspace, or each
    /// `--src DIR`. Unless --actions is given (flag or environment), the
    /// builds are installed into target/switchboard-dev/actions (under
    /// CARGO_TARGET_DIR if set), never the `actions` folder of deployed
    /// plugins; the config file's `actions` is not used.
    Dev(Box<DevArgs>),
    /// Mint a client token signed with the server's secret.
    Token(Box<TokenArgs>),
    /// Load one plugin file and print its ABI version, name, version and
    /// actions, or why it cannot be loaded.
    Check(CheckArgs),
    /// Load-test a server (this one or the floor server) and report rates
    /// and latencies.
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:7800/ws", global = true)]
    pub(crate) url: String,
    /// Sign each connection in with a token minted from this secret
    /// (prefer the environment variable or --jwt-secret-file: a flag is
    /// visible to every local user).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub(crate) jwt_secret: Option<String>,
    /// A file holding the secret to mint tokens with.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET_FILE",
        value_name = "FILE",
        global = true,
        conflicts_with = "jwt_secret"
    )]
    pub(crate) jwt_secret_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) scenario: BenchScenario,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchScenario {
    /// N connections with P calls in flight each.
    Rpc {
        /// Connections.
        #[arg(long, default_value_t = 50)]
        conns: usize,
        /// Calls in flight per connection.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// The method to call.
        #[arg(long, default_value = "echo")]
        method: String,
        /// Bytes of padding in each call's params.
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// How long to measure, after a 1 s warm-up.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// R rooms of S subscribers, one publisher per room.
    Fanout {
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Subscribers per room.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Messages per second over all rooms.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Bytes of padding in each message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// How long to measure, after a 1 s warm-up.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// N idle connections; with --pid, the server's RSS per connection.
    Conns {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// The server's process id, to read its memory.
        #[arg(long)]
        pid: Option<u32>,
        /// After measuring, keep them open this long, then check each one
        /// still answers (for several servers measured at once).
        #[arg(long, value_parser = humantime::parse_duration)]
        hold: Option<Duration>,
    },
    /// Hot-reload swap latency, and load during a reload storm: swaps two
    /// builds of one plugin in the server's actions folder.
    Reload {
        /// The plugin file in the server's actions folder to replace.
        #[arg(long, value_name = "FILE")]
        target: PathBuf,
        /// The first build (installed first).
        #[arg(long, value_name = "FILE")]
        a: PathBuf,
        /// The second build.
        #[arg(long, value_name = "FILE")]
        b: PathBuf,
        /// A method whose result differs between the builds (e.g. one that
        /// reports the plugin's version).
        #[arg(long)]
        method: String,
        /// Swaps timed for latency.
        #[arg(long, default_value_t = 50)]
        swaps: usize,
        /// Connections for the storm's load.
        #[arg(long, default_value_t = 20)]
        conns: usize,
        /// Calls in flight per connection for the storm's load.
        #[arg(long, default_value_t = 4)]
        inflight: usize,
        /// How long each half of the storm (steady, swapping) measures in
        /// all.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Steady and storm windows alternate this many times, splitting
        /// `--duration`, so a drift of the machine falls on both alike.
        #[arg(long, default_value_t = 5)]
        windows: usize,
    },
}

/// Where the settings come from: a TOML file, then environment variables,
/// then flags (each overriding the one before).
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// TOML config file (see the README's configuration reference).
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// HS256 secret for client tokens (at least 16 bytes). Prefer
    /// --jwt-secret-file or the environment variable: a flag is visible to
    /// every local user in the process list.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub(crate) jwt_secret: Option<String>,
    /// A file holding the HS256 secret (e.g. created with mode 0600).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "jwt_secret"
    )]
    pub(crate) jwt_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) common: ConfigArgs,
    /// PEM file with an RSA or EC public key for RS256/ES256 tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub(crate) jwt_public_key: Option<PathBuf>,
    /// JWKS file of public keys (chosen by `kid`), re-read when it changes.
    #[arg(long, env = "SWITCHBOARD_JWKS_FILE", value_name = "FILE")]
    pub(crate) jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_name = "ISS")]
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_name = "AUD")]
    pub(crate) jwt_audience: Option<String>,
    /// Seconds of clock skew tolerated on exp/nbf [default: 5].
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY_SECS", value_name = "SECS")]
    pub(crate) jwt_leeway_secs: Option<u64>,
    /// Refuse tokens whose exp is further away than this, in seconds; 0
    /// allows any [default: 2592000, 30 days].
    #[arg(long, env = "SWITCHBOARD_JWT_MAX_LIFETIME_SECS", value_name = "SECS")]
    pub(crate) jwt_max_lifetime_secs: Option<u64>,
    /// Authenticators tried in order, comma-separated: jwt, plugin [default: jwt].
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_CHAIN",
        value_name = "STEPS",
        value_delimiter = ','
    )]
    pub(crate) auth_chain: Option<Vec<switchboard::config::AuthStep>>,
    /// The plugin whose authenticate hook the chain's plugin step calls.
    #[arg(long, env = "SWITCHBOARD_AUTH_PLUGIN", value_name = "NAME")]
    pub(crate) auth_plugin: Option<String>,
    /// Close connections that have not signed in after this long (4001), in
    /// milliseconds; 0 lets anonymous connections stay [default: 10000].
    #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT_MS", value_name = "MS")]
    pub(crate) auth_timeout_ms: Option<u64>,
    /// Browser origins allowed to connect, comma-separated [default: any].
    #[arg(
        long,
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Most open WebSocket connections; more get HTTP 503 [default: what
    /// the open-file limit allows, less headroom].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Most open connections that have not signed in [default: a quarter
    /// of max_connections].
    #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_CONNECTIONS", value_name = "N")]
    pub(crate) max_anonymous_connections: Option<usize>,
    /// Most connections that have not signed in from one address (IPv6:
    /// one /64) [default: 32].
    #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_PER_ADDRESS", value_name = "N")]
    pub(crate) max_anonymous_per_address: Option<usize>,
    /// Bytes queued for one connection before it is closed as a slow
    /// consumer (4008) [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
    pub(crate) outbound_queue_bytes: Option<usize>,
    /// Most rooms in memory in the whole server [default: 100000].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS", value_name = "N")]
    pub(crate) max_rooms: Option<usize>,
    /// Bytes of room history kept in the whole server [default: 67108864].
    #[arg(long, env = "SWITCHBOARD_MAX_HISTORY_BYTES", value_name = "BYTES")]
    pub(crate) max_history_bytes: Option<usize>,
    /// Most rooms one connection may create per minute [default: 100].
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_ROOM_CREATIONS_PER_MINUTE",
        value_name = "N"
    )]
    pub(crate) max_room_creations_per_minute: Option<u32>,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7800; port 0 picks one].
    #[arg(long, short = 'l', env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Folder of plugin libraries to load [default: actions].
    #[arg(long, short = 'a', env = "SWITCHBOARD_ACTIONS", value_name = "DIR")]
    pub(crate) actions: Option<PathBuf>,
    /// Deadline for actions that set none, in milliseconds [default: 30000].
    #[arg(long, env = "SWITCHBOARD_CALL_TIMEOUT_MS", value_name = "MS")]
    pub(crate) call_timeout_ms: Option<u64>,
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub(crate) max_message_bytes: Option<usize>,
    /// Most calls in one batch [default: 100].
    #[arg(long, env = "SWITCHBOARD_MAX_BATCH", value_name = "N")]
    pub(crate) max_batch: Option<usize>,
    /// Most action calls running in the server at once [default: 1024].
    #[arg(long, env = "SWITCHBOARD_MAX_INFLIGHT_CALLS", value_name = "N")]
    pub(crate) max_inflight_calls: Option<usize>,
    /// Most action calls running for one connection at once [default: 128].
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_INFLIGHT_PER_CONNECTION",
        value_name = "N"
    )]
    pub(crate) max_inflight_per_connection: Option<usize>,
    /// How long a write to a client may stall before it is dropped, in
    /// milliseconds [default: 10000].
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS", value_name = "MS")]
    pub(crate) write_timeout_ms: Option<u64>,
    /// How long shutdown waits for connections, in milliseconds [default: 5000].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub(crate) shutdown_grace_ms: Option<u64>,
    /// Folder for the private plugin copies [default: $TMPDIR/switchboard-shadow].
    #[arg(long, env = "SWITCHBOARD_SHADOW_DIR", value_name = "DIR")]
    pub(crate) shadow_dir: Option<PathBuf>,
    /// Watch the actions folder and hot-reload changed plugins [default: true].
    #[arg(long, env = "SWITCHBOARD_WATCH", value_name = "BOOL")]
    pub(crate) watch: Option<bool>,
    /// How long a changed plugin file must stay unchanged before it is
    /// loaded, in milliseconds [default: 200].
    #[arg(long, env = "SWITCHBOARD_RELOAD_DEBOUNCE_MS", value_name = "MS")]
    pub(crate) reload_debounce_ms: Option<u64>,
    /// Most generations of one plugin kept draining or mapped; past it a
    /// reload is refused as busy [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_GENERATIONS", value_name = "N")]
    pub(crate) max_generations: Option<usize>,
    /// Deadline of the out-of-process preflight of a plugin file, in
    /// milliseconds [default: 10000].
    #[arg(long, env = "SWITCHBOARD_PREFLIGHT_TIMEOUT_MS", value_name = "MS")]
    pub(crate) preflight_timeout_ms: Option<u64>,
    /// Debugging aid: keep each retired generation's address range
    /// reserved with no access once it is unmapped, so a stale pointer into
    /// it faults at once [default: false].
    #[arg(long, env = "SWITCHBOARD_RELOAD_PROTECT_RETIRED", value_name = "BOOL")]
    pub(crate) reload_protect_retired: Option<bool>,
    /// Load plugins even from a folder others can write to, files owned
    /// by another user, or symlinks leaving the folder (each is warned
    /// about) [default: false: refused].
    #[arg(
        long,
        env = "SWITCHBOARD_ALLOW_UNSAFE_PLUGIN_FOLDER",
        value_name = "BOOL"
    )]
    pub(crate) allow_unsafe_plugin_folder: Option<bool>,
}

#[derive(Debug, Args)]
#[command(mut_arg("actions", |a| a.help(
    "Folder the builds are installed into and served from \
     [default: target/switchboard-dev/actions, never `actions`]"
)))]
pub(crate) struct DevArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    /// A plugin crate's folder to watch and build; repeat for several
    /// [default: every actions/* crate of the workspace around the current
    /// folder].
    #[arg(long = "src", value_name = "DIR")]
    pub(crate) src: Vec<PathBuf>,
    /// Build with `cargo build --release`.
    #[arg(long)]
    pub(crate) release: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    pub(crate) common: ConfigArgs,
    /// The user the token signs in (its `sub` claim).
    #[arg(long)]
    pub(crate) sub: String,
    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// A scope to grant (the `scopes` claim); repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub(crate) scopes: Vec<String>,
    /// A room the token may join (the `rooms` claim); repeat for several.
    #[arg(long = "room", value_name = "ROOM")]
    pub(crate) rooms: Vec<String>,
    /// Make a one-time token: it opens at most one connection. Give an id,
    /// or `auto` for a random one.
    #[arg(long, value_name = "ID")]
    pub(crate) jti: Option<String>,
    /// The `iss` claim.
    #[arg(long, value_name = "ISS")]
    pub(crate) iss: Option<String>,
    /// The `aud` claim.
    #[arg(long, value_name = "AUD")]
    pub(crate) aud: Option<String>,
    /// Sign with this PEM private key instead of the secret: an RSA key
    /// signs RS256, an EC P-256 key ES256.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Key id for the header (to pick the key from a JWKS).
    #[arg(long, value_name = "KID", requires = "key")]
    pub(crate) kid: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The plugin file (.so).
    pub(crate) file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Open FILE itself rather than a private copy of it (the server's
    /// preflight passes its own private copy).
    #[arg(long, hide = true)]
    pub(crate) in_place: bool,
}
