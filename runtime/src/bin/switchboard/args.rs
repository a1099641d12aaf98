//! The command line: every subcommand and its flags (clap). The server's
//! settings, with their flags and environment variables, are defined once
//! in the library's [`switchboard::config::Config`]; here they are only
//! flattened in.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use switchboard::config::{SecretOverrides, SettingOverrides};

/// Switchboard: call native Rust actions over a WebSocket, in JSON-RPC 2.0.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line, with the connection's span: id, user, address) for
    /// log collectors.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        global = true
    )]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Readable lines (colored on a terminal).
    Text,
    /// One JSON object per line.
    Json,
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
    /// Watches the `actions/*` crates of the workspace around the current
    /// folder, or each `--src DIR`. Unless --actions is given (flag or
    /// environment), the builds are installed into
    /// target/switchboard-dev/actions of that workspace (found from the
    /// current folder; $CARGO_TARGET_DIR/switchboard-dev/actions if set),
    /// never the `actions` folder of deployed plugins; the config file's
    /// `actions` is not used. The port is taken before the first build.
    Dev(Box<DevArgs>),
    /// Mint a client token signed with the server's secret.
    ///
    /// With no secret or key given, signs with the development secret that
    /// `serve` uses when no key is configured
    /// ($XDG_STATE_HOME/switchboard/dev-secret, else
    /// ~/.local/state/switchboard/dev-secret).
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
    /// visible to every local user). With neither, the development secret
    /// (what `serve` uses with no key) if there is one, else anonymous.
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
    /// Sign every connection in with this token instead (a token your
    /// own issuer minted; the server must accept it as many times).
    #[arg(
        long,
        env = "SWITCHBOARD_BENCH_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with_all = ["jwt_secret", "jwt_secret_file"]
    )]
    pub(crate) token: Option<String>,
    /// The server's process id: its CPU use over the measured period is
    /// reported, with the rate per server CPU-second, and a run where its
    /// core was less than 90% busy is marked generator-bound (`conns`:
    /// its memory per connection). `rpc` and `fanout` take it more than
    /// once for a server made of several processes (a cluster's nodes and
    /// Redis): their CPU is added up.
    #[arg(long, global = true)]
    pub(crate) pid: Vec<u32>,
    /// Threads of the load generator (default: the cores it may run on,
    /// see `taskset`).
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    /// Keep the generator's threads polling their sockets instead of
    /// sleeping while the run is on. On one machine, a server's reply that
    /// finds the generator asleep pays for waking its core, and the slower
    /// the server the more often it does; with this flag neither server
    /// compared pays it (the generator's CPU then reads as fully busy).
    #[arg(long, global = true)]
    pub(crate) busy_poll: bool,
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
        /// Each call's params, JSON (e.g. '{"a": 6, "b": 3}'); default
        /// `{"pad": "xxx..."}` of --payload bytes.
        #[arg(long, value_name = "JSON", conflicts_with = "payload")]
        params: Option<String>,
        /// Bytes of padding in each call's default params.
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
        /// Connect subscribers here instead, round-robin over every one
        /// given (other nodes of a cluster; publishers use --url).
        #[arg(long = "subscriber-url", value_name = "WS_URL")]
        subscriber_urls: Vec<String>,
    },
    /// N idle connections; with --pid, the server's RSS per connection.
    Conns {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
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
    /// A bounded soak: thousands of connections doing mixed calls, joins,
    /// publishes and leaves, reconnect storms with recovery, hot reloads
    /// and hostile clients; checks at the end that nothing was lost and
    /// memory stayed flat, and exits non-zero when a check fails.
    Soak(SoakArgs),
}

/// `switchboard bench soak`'s settings.
#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// How long the load runs (then a drain and the checks).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Well-behaved connections, each signed in as its own user (at most
    /// 15000: the generator holds each, and one process may hold 20000
    /// open files here).
    #[arg(
        long,
        default_value_t = 2000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=15_000)
    )]
    pub(crate) conns: usize,
    /// Operations (calls, publishes, joins, leaves) per second over all
    /// connections.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(crate) rate: u64,
    /// Rooms the connections join and publish to (`soak-<n>`).
    #[arg(long, default_value_t = 40)]
    pub(crate) rooms: usize,
    /// A reconnect storm this often: a share of the connections drop at
    /// once, reconnect and rejoin their rooms with recovery.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) storm_every: Duration,
    /// The share of connections each storm drops, in percent.
    #[arg(long, default_value_t = 10)]
    pub(crate) storm_percent: u64,
    /// A plugin file in the server's actions folder to hot-reload (e.g.
    /// the echo plugin the load calls); none: no reloads.
    #[arg(long, value_name = "FILE")]
    pub(crate) reload_target: Option<PathBuf>,
    /// Builds installed over the target in turn (repeat for several);
    /// default: the target as it was at the start. Each install is a
    /// content the server has never seen, so each is a full reload.
    #[arg(long = "reload-build", value_name = "FILE")]
    pub(crate) reload_builds: Vec<PathBuf>,
    /// A hot reload this often.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) reload_every: Duration,
    /// A round of hostile clients (oversized frame, flood, garbage, slow
    /// reader) this often.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) hostile_every: Duration,
    /// The server's `max_message_bytes` (the oversized client sends more).
    #[arg(long, default_value_t = 1 << 20)]
    pub(crate) max_message_bytes: usize,
    /// RSS check: the largest growth allowed over the second half of the
    /// run, in percent of the server's RSS per minute (or
    /// `--rss-slope-mib`, whichever is larger).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rss_slope_percent: f64,
    /// RSS check: the same bound in MiB per minute.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) rss_slope_mib: f64,
}

/// The TOML config file settings are read from first.
#[derive(Debug, Args)]
pub(crate) struct ConfigFile {
    /// TOML config file (see the README's configuration reference).
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Where `serve`'s settings come from: the config file, then environment
/// variables, then flags (each overriding the one before). Every setting
/// and its flag is defined once, in [`switchboard::config::Config`].
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) file: ConfigFile,
    #[command(flatten)]
    pub(crate) settings: SettingOverrides,
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
    pub(crate) file: ConfigFile,
    #[command(flatten)]
    pub(crate) secret: SecretOverrides,
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
