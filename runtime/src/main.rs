//! The `switchboard` binary: `serve` (the server), `token` (mint a client
//! token) and `check` (inspect a plugin file). Flags, environment and the
//! config file are merged here; everything else lives in the library.

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use switchboard::auth::mint::NewToken;
use switchboard::auth::{TokenMinter, random_secret};
use switchboard::config::Config;
use switchboard::config::Secret;
use switchboard::server::Server;
use tracing_subscriber::EnvFilter;

/// Switchboard: call native Rust actions over a WebSocket, in JSON-RPC 2.0.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct BenchArgs {
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:7800/ws", global = true)]
    url: String,
    /// Sign each connection in with a token minted from this secret
    /// (prefer the environment variable or --jwt-secret-file: a flag is
    /// visible to every local user).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    jwt_secret: Option<String>,
    /// A file holding the secret to mint tokens with.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET_FILE",
        value_name = "FILE",
        global = true,
        conflicts_with = "jwt_secret"
    )]
    jwt_secret_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: BenchScenario,
}

#[derive(Debug, Subcommand)]
enum BenchScenario {
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
struct ConfigArgs {
    /// TOML config file (see the README's configuration reference).
    #[arg(long, short = 'c', env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HS256 secret for client tokens (at least 16 bytes). Prefer
    /// --jwt-secret-file or the environment variable: a flag is visible to
    /// every local user in the process list.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    jwt_secret: Option<String>,
    /// A file holding the HS256 secret (e.g. created with mode 0600).
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "jwt_secret"
    )]
    jwt_secret_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// PEM file with an RSA or EC public key for RS256/ES256 tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_PUBLIC_KEY", value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS file of public keys (chosen by `kid`), re-read when it changes.
    #[arg(long, env = "SWITCHBOARD_JWKS_FILE", value_name = "FILE")]
    jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String>,
    /// Seconds of clock skew tolerated on exp/nbf [default: 5].
    #[arg(long, env = "SWITCHBOARD_JWT_LEEWAY_SECS", value_name = "SECS")]
    jwt_leeway_secs: Option<u64>,
    /// Refuse tokens whose exp is further away than this, in seconds; 0
    /// allows any [default: 2592000, 30 days].
    #[arg(long, env = "SWITCHBOARD_JWT_MAX_LIFETIME_SECS", value_name = "SECS")]
    jwt_max_lifetime_secs: Option<u64>,
    /// Authenticators tried in order, comma-separated: jwt, plugin [default: jwt].
    #[arg(
        long,
        env = "SWITCHBOARD_AUTH_CHAIN",
        value_name = "STEPS",
        value_delimiter = ','
    )]
    auth_chain: Option<Vec<switchboard::config::AuthStep>>,
    /// The plugin whose authenticate hook the chain's plugin step calls.
    #[arg(long, env = "SWITCHBOARD_AUTH_PLUGIN", value_name = "NAME")]
    auth_plugin: Option<String>,
    /// Close connections that have not signed in after this long (4001), in
    /// milliseconds; 0 lets anonymous connections stay [default: 10000].
    #[arg(long, env = "SWITCHBOARD_AUTH_TIMEOUT_MS", value_name = "MS")]
    auth_timeout_ms: Option<u64>,
    /// Browser origins allowed to connect, comma-separated [default: any].
    #[arg(
        long,
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Option<Vec<String>>,
    /// Most open WebSocket connections; more get HTTP 503 [default: what
    /// the open-file limit allows, less headroom].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Most open connections that have not signed in [default: a quarter
    /// of max_connections].
    #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_CONNECTIONS", value_name = "N")]
    max_anonymous_connections: Option<usize>,
    /// Most connections that have not signed in from one address (IPv6:
    /// one /64) [default: 32].
    #[arg(long, env = "SWITCHBOARD_MAX_ANONYMOUS_PER_ADDRESS", value_name = "N")]
    max_anonymous_per_address: Option<usize>,
    /// Bytes queued for one connection before it is closed as a slow
    /// consumer (4008) [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
    outbound_queue_bytes: Option<usize>,
    /// Most rooms in memory in the whole server [default: 100000].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS", value_name = "N")]
    max_rooms: Option<usize>,
    /// Bytes of room history kept in the whole server [default: 67108864].
    #[arg(long, env = "SWITCHBOARD_MAX_HISTORY_BYTES", value_name = "BYTES")]
    max_history_bytes: Option<usize>,
    /// Most rooms one connection may create per minute [default: 100].
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_ROOM_CREATIONS_PER_MINUTE",
        value_name = "N"
    )]
    max_room_creations_per_minute: Option<u32>,
    /// PEM certificate chain: serve wss:// and https:// (needs --tls-key).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7800; port 0 picks one].
    #[arg(long, short = 'l', env = "SWITCHBOARD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Folder of plugin libraries to load [default: actions].
    #[arg(long, short = 'a', env = "SWITCHBOARD_ACTIONS", value_name = "DIR")]
    actions: Option<PathBuf>,
    /// Deadline for actions that set none, in milliseconds [default: 30000].
    #[arg(long, env = "SWITCHBOARD_CALL_TIMEOUT_MS", value_name = "MS")]
    call_timeout_ms: Option<u64>,
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Most calls in one batch [default: 100].
    #[arg(long, env = "SWITCHBOARD_MAX_BATCH", value_name = "N")]
    max_batch: Option<usize>,
    /// Most action calls running in the server at once [default: 1024].
    #[arg(long, env = "SWITCHBOARD_MAX_INFLIGHT_CALLS", value_name = "N")]
    max_inflight_calls: Option<usize>,
    /// Most action calls running for one connection at once [default: 128].
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_INFLIGHT_PER_CONNECTION",
        value_name = "N"
    )]
    max_inflight_per_connection: Option<usize>,
    /// How long a write to a client may stall before it is dropped, in
    /// milliseconds [default: 10000].
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS", value_name = "MS")]
    write_timeout_ms: Option<u64>,
    /// How long shutdown waits for connections, in milliseconds [default: 5000].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS", value_name = "MS")]
    shutdown_grace_ms: Option<u64>,
    /// Folder for the private plugin copies [default: $TMPDIR/switchboard-shadow].
    #[arg(long, env = "SWITCHBOARD_SHADOW_DIR", value_name = "DIR")]
    shadow_dir: Option<PathBuf>,
    /// Watch the actions folder and hot-reload changed plugins [default: true].
    #[arg(long, env = "SWITCHBOARD_WATCH", value_name = "BOOL")]
    watch: Option<bool>,
    /// How long a changed plugin file must stay unchanged before it is
    /// loaded, in milliseconds [default: 200].
    #[arg(long, env = "SWITCHBOARD_RELOAD_DEBOUNCE_MS", value_name = "MS")]
    reload_debounce_ms: Option<u64>,
    /// Most generations of one plugin kept draining or mapped; past it a
    /// reload is refused as busy [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_GENERATIONS", value_name = "N")]
    max_generations: Option<usize>,
    /// Deadline of the out-of-process preflight of a plugin file, in
    /// milliseconds [default: 10000].
    #[arg(long, env = "SWITCHBOARD_PREFLIGHT_TIMEOUT_MS", value_name = "MS")]
    preflight_timeout_ms: Option<u64>,
    /// Debugging aid: keep each retired generation's address range
    /// reserved with no access once it is unmapped, so a stale pointer into
    /// it faults at once [default: false].
    #[arg(long, env = "SWITCHBOARD_RELOAD_PROTECT_RETIRED", value_name = "BOOL")]
    reload_protect_retired: Option<bool>,
    /// Load plugins even from a folder others can write to, files owned
    /// by another user, or symlinks leaving the folder (each is warned
    /// about) [default: false: refused].
    #[arg(
        long,
        env = "SWITCHBOARD_ALLOW_UNSAFE_PLUGIN_FOLDER",
        value_name = "BOOL"
    )]
    allow_unsafe_plugin_folder: Option<bool>,
}

#[derive(Debug, Args)]
#[command(mut_arg("actions", |a| a.help(
    "Folder the builds are installed into and served from \
     [default: target/switchboard-dev/actions, never `actions`]"
)))]
struct DevArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// A plugin crate's folder to watch and build; repeat for several
    /// [default: every actions/* crate of the workspace around the current
    /// folder].
    #[arg(long = "src", value_name = "DIR")]
    src: Vec<PathBuf>,
    /// Build with `cargo build --release`.
    #[arg(long)]
    release: bool,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// The user the token signs in (its `sub` claim).
    #[arg(long)]
    sub: String,
    /// How long the token is valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// A scope to grant (the `scopes` claim); repeat for several.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A room the token may join (the `rooms` claim); repeat for several.
    #[arg(long = "room", value_name = "ROOM")]
    rooms: Vec<String>,
    /// Make a one-time token: it opens at most one connection. Give an id,
    /// or `auto` for a random one.
    #[arg(long, value_name = "ID")]
    jti: Option<String>,
    /// The `iss` claim.
    #[arg(long, value_name = "ISS")]
    iss: Option<String>,
    /// The `aud` claim.
    #[arg(long, value_name = "AUD")]
    aud: Option<String>,
    /// Sign with this PEM private key instead of the secret: an RSA key
    /// signs RS256, an EC P-256 key ES256.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Key id for the header (to pick the key from a JWKS).
    #[arg(long, value_name = "KID", requires = "key")]
    kid: Option<String>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The plugin file (.so).
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Open FILE itself rather than a private copy of it (the server's
    /// preflight passes its own private copy).
    #[arg(long, hide = true)]
    in_place: bool,
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if secret_on_command_line(&matches) {
        tracing::warn!(
            "the JWT secret was given with --jwt-secret: every user of this machine can read it in the \
             process list (/proc/<pid>/cmdline). Use --jwt-secret-file FILE (mode 0600) or \
             SWITCHBOARD_JWT_SECRET instead"
        );
    }
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Dev(args) => dev(*args),
        Command::Token(args) => token(*args),
        Command::Check(args) => check(args),
        Command::Bench(args) => bench(*args),
    }
}

/// Whether the subcommand's `--jwt-secret` came from the command line
/// (not from the environment or a file).
fn secret_on_command_line(matches: &ArgMatches) -> bool {
    matches.subcommand().is_some_and(|(_, sub)| {
        sub.try_get_raw("jwt_secret").is_ok()
            && sub.value_source("jwt_secret") == Some(ValueSource::CommandLine)
    })
}

fn base_config(common: &ConfigArgs) -> anyhow::Result<Config> {
    let mut config = match &common.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    // A secret given here (flag or environment) replaces the file's, in
    // either form.
    if let Some(secret) = &common.jwt_secret {
        config.jwt_secret = Some(Secret::new(secret.clone()));
        config.jwt_secret_file = None;
    }
    if let Some(file) = &common.jwt_secret_file {
        config.jwt_secret_file = Some(file.clone());
        config.jwt_secret = None;
    }
    Ok(config)
}

/// Reads `jwt_secret_file` into `jwt_secret`, warning when other users
/// can read the file.
fn read_secret_file(config: &mut Config) -> anyhow::Result<()> {
    if let Some(warning) = config.read_secret_file()? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

fn serve_config(args: ServeArgs) -> anyhow::Result<Config> {
    let mut config = base_config(&args.common)?;
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = args.$field { config.$field = v; })* };
    }
    set!(
        listen,
        actions,
        call_timeout_ms,
        max_message_bytes,
        max_batch,
        max_inflight_calls,
        max_inflight_per_connection,
        write_timeout_ms,
        shutdown_grace_ms,
        watch,
        reload_debounce_ms,
        max_generations,
        preflight_timeout_ms,
        reload_protect_retired,
        allow_unsafe_plugin_folder
    );
    set!(
        jwt_leeway_secs,
        jwt_max_lifetime_secs,
        auth_chain,
        auth_timeout_ms,
        allowed_origins,
        max_anonymous_per_address,
        outbound_queue_bytes,
        max_rooms,
        max_history_bytes,
        max_room_creations_per_minute
    );
    macro_rules! set_optional {
        ($($field:ident),*) => { $(if args.$field.is_some() { config.$field = args.$field; })* };
    }
    set_optional!(
        max_connections,
        max_anonymous_connections,
        shadow_dir,
        jwt_public_key,
        jwks_file,
        jwt_issuer,
        jwt_audience,
        auth_plugin,
        tls_cert,
        tls_key
    );
    config.validate()?;
    read_secret_file(&mut config)?;
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    serve_with(serve_config(args)?)
}

/// `serve` plus a watch on plugin sources that rebuilds and installs them.
fn dev(args: DevArgs) -> anyhow::Result<()> {
    use switchboard::dev::{DevOptions, DevWatch, default_actions_dir, resolve_crates};
    let DevArgs {
        mut serve,
        src,
        release,
    } = args;
    let cwd = std::env::current_dir().context("could not read the current folder")?;
    let crates = resolve_crates(&src, &cwd)?;
    if serve.actions.is_none() {
        serve.actions = Some(default_actions_dir(&cwd));
    }
    let mut config = serve_config(serve)?;
    if !config.watch {
        tracing::warn!("dev needs the actions folder watch to hot-reload; ignoring watch = false");
        config.watch = true;
    }
    let options = DevOptions {
        release,
        ..DevOptions::default()
    };
    let _watch = DevWatch::start(crates, &config.actions, options)?;
    serve_with(config)
}

/// Serves an already merged config (`serve` and `dev`).
fn serve_with(config: Config) -> anyhow::Result<()> {
    let server = Server::builder(config).build()?;
    let blocking =
        server.config().max_inflight_calls + switchboard::auth::chain::MAX_PLUGIN_CALLS + 16;
    let listen = server.config().listen;
    // Actions run on the server's own action pool; tokio's blocking pool
    // runs the plugins' join hooks (each holds one of `max_inflight_calls`
    // permits), auth plugin calls (at most MAX_PLUGIN_CALLS), and a few
    // housekeeping jobs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .thread_name("switchboard")
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("could not listen on {listen}"))?;
        if let Some(minter) = server.dev_minter() {
            let ws = if server.is_tls() { "wss" } else { "ws" };
            print_dev_banner(minter, ws, listener.local_addr()?)?;
        }
        server.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Plugin calls past their deadline may still be running on blocking
    // threads; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

fn print_dev_banner(minter: &TokenMinter, ws: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let token = minter.mint_for("dev", Duration::from_secs(24 * 3600))?;
    tracing::warn!("no jwt_secret configured: using a random secret for this run only");
    println!("Development token (user \"dev\", valid 24 h):\n  {token}");
    println!("Connect:  {ws}://{addr}/ws?token={token}");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let minter = match &args.key {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("could not read the key {}", path.display()))?;
            TokenMinter::from_private_pem(&pem, args.kid.clone())
                .with_context(|| format!("{}", path.display()))?
        }
        None => {
            let mut config = base_config(&args.common)?;
            config.validate()?;
            read_secret_file(&mut config)?;
            let Some(secret) = config.jwt_secret else {
                bail!(
                    "no secret: pass --jwt-secret-file FILE, set SWITCHBOARD_JWT_SECRET, set jwt_secret_file \
                     in the config file, or sign with --key"
                );
            };
            TokenMinter::hs256(secret.expose().as_bytes())
        }
    };
    if args.ttl > Duration::from_secs(30 * 24 * 3600) {
        tracing::warn!(
            "a token valid for {} is refused by servers with the default jwt_max_lifetime_secs \
             (30 days); raise it on the server, or mint shorter tokens",
            humantime::format_duration(args.ttl)
        );
    }
    let jti = match args.jti.as_deref() {
        Some("auto") => Some(random_secret().context("could not make a random jti")?),
        other => other.map(str::to_owned),
    };
    let claims = NewToken {
        sub: args.sub,
        scopes: args.scopes,
        rooms: args.rooms,
        jti,
        iss: args.iss,
        aud: args.aud,
    };
    println!("{}", minter.mint(&claims, args.ttl)?);
    Ok(())
}

fn check(args: CheckArgs) -> anyhow::Result<()> {
    if args.in_place {
        switchboard::plugins::preflight::become_preflight_child();
    }
    let shadow_base = std::env::temp_dir().join(format!(
        "switchboard-check-{}",
        switchboard::sys::effective_uid()
    ));
    let report = switchboard::describe::check(
        &args.file,
        (!args.in_place).then_some(shadow_base.as_path()),
    );
    if args.in_place {
        // For the server's preflight: one marked line, so whatever the
        // plugin itself printed while loading is not taken for the report.
        println!(
            "{}{}",
            switchboard::plugins::preflight::REPORT_MARKER,
            serde_json::to_string(&report)?
        );
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        print!("{report}");
    } else {
        eprintln!("{report}");
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use switchboard::bench::{client::Target, conns, fanout, rpc};
    let secret = match (&args.jwt_secret, &args.jwt_secret_file) {
        (_, Some(file)) => {
            let mut config = Config {
                jwt_secret_file: Some(file.clone()),
                ..Config::default()
            };
            read_secret_file(&mut config)?;
            config.jwt_secret.map(|s| s.expose().to_owned())
        }
        (secret, None) => secret.clone(),
    };
    let target = Target {
        url: args.url,
        secret,
    };
    // One thread: the load generator is pinned to its own core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let json = args.json;
    runtime.block_on(async move {
        match args.scenario {
            BenchScenario::Rpc {
                conns,
                inflight,
                method,
                payload,
                duration,
            } => {
                let scenario = rpc::RpcScenario {
                    conns,
                    inflight,
                    method,
                    payload,
                    duration,
                };
                let report = rpc::run(&target, &scenario).await?;
                print_report(&report, json)
            }
            BenchScenario::Fanout {
                rooms,
                subscribers,
                rate,
                payload,
                duration,
            } => {
                let scenario = fanout::FanoutScenario {
                    rooms,
                    subscribers,
                    rate,
                    payload,
                    duration,
                };
                let report = fanout::run(&target, &scenario).await?;
                print_report(&report, json)
            }
            BenchScenario::Reload {
                target: file,
                a,
                b,
                method,
                swaps,
                conns,
                inflight,
                duration,
                windows,
            } => {
                let scenario = switchboard::bench::reload::ReloadScenario {
                    target: file,
                    builds: [a, b],
                    method,
                    swaps,
                    conns,
                    inflight,
                    duration,
                    windows,
                };
                let report = switchboard::bench::reload::run(&target, &scenario).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
            BenchScenario::Conns { count, pid, hold } => {
                let report = conns::run(&target, count, pid, hold).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "connections {}  rss before {:?} KiB  after {:?} KiB  per connection {:?} bytes  opened in {:.1} s",
                        report.connections, report.rss_before_kib, report.rss_after_kib, report.bytes_per_connection, report.open_secs
                    );
                    if let Some(alive) = report.alive_after_hold {
                        println!("after holding: {alive} of {} still answered", report.connections);
                    }
                }
                Ok(())
            }
        }
    })
}

fn print_report(report: &switchboard::bench::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
