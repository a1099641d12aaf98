//! [`Server`]: a whole server assembled from its settings, in the library,
//! so that the binary is a thin command line and a test (or an embedding
//! program) can start one in process.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::config::Config;
//! use switchboard::server::Server;
//!
//! let server = Server::builder(Config::default()).build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server.serve(listener, std::future::pending()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`ServerBuilder::build`] does everything that can fail before the first
//! connection, each failure a [`StartError`] that says how to fix it: the
//! actions folder (and whether it is safe), the token keys, the connection
//! limits, the shadow folder, and loading the plugins. It also logs the
//! start-up warnings (origins, secrets, limits). [`Server::serve`] then runs
//! the listener, the folder watch and the room sweep until `shutdown`.

use crate::auth::{Authenticator, JwtVerifier, TokenMinter, dev_secret};
use crate::config::{AuthStep, Config, Secret};
use crate::host_services::ServerServices;
use crate::limits::ConnectionLimits;
use crate::plugins::shadow::ShadowError;
use crate::plugins::trust::{FolderTrust, Unsafe};
use crate::plugins::{Registry, ReloadSettings, ShadowDir};
use crate::state::ServerState;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The actions folder does not exist.
    #[error("the actions folder {0} does not exist (set it with --actions DIR)")]
    NoActionsFolder(PathBuf),
    /// The actions folder could not be read.
    #[error("could not read the actions folder {folder}: {source}")]
    ActionsFolder {
        /// The folder.
        folder: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others could put code into the actions folder.
    #[error(
        "refusing to load plugins from {folder}: {problem} (or set allow_unsafe_plugin_folder = true to accept it)"
    )]
    UnsafeFolder {
        /// The folder.
        folder: PathBuf,
        /// What is wrong with it.
        problem: Unsafe,
    },
    /// The shadow folder could not be used.
    #[error("could not use the plugin shadow folder {base}: {source}")]
    Shadow {
        /// The folder.
        base: PathBuf,
        /// Why.
        source: ShadowError,
    },
    /// `token_endpoint` is on but what it needs is not configured.
    #[error("{0}")]
    TokenEndpoint(String),
    /// The cluster broker could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// No random node name could be made.
    #[error("could not make a random node name: {0}")]
    Random(#[from] getrandom::Error),
    /// The development secret could not be read or made.
    #[error(transparent)]
    DevSecret(#[from] crate::auth::dev_secret::DevSecretError),
    /// A key file is unusable.
    #[error(transparent)]
    Keys(#[from] crate::auth::jwt::KeyError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),
    /// The folder watch could not start.
    #[error(transparent)]
    Watch(#[from] crate::plugins::watch::WatchError),
    /// The listener's address could not be read.
    #[error("could not read the listening address: {0}")]
    Address(std::io::Error),
}

/// Settings on their way to a [`Server`].
#[derive(Debug)]
pub struct ServerBuilder {
    config: Config,
}

/// A server ready to serve: settings checked, plugins loaded.
pub struct Server {
    config: Config,
    services: Arc<ServerServices>,
    registry: Registry,
    auth: Authenticator,
    limits: ConnectionLimits,
    dev_minter: Option<TokenMinter>,
    dev_secret_file: Option<PathBuf>,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts assembling a server from `config` (already validated, with
    /// any secret file read: see [`Config::validate`] and
    /// [`Config::read_secret_file`]).
    pub fn builder(config: Config) -> ServerBuilder {
        ServerBuilder { config }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// With no token key configured, the minter of the development
    /// secret, to hand a token to the person who started the server.
    pub fn dev_minter(&self) -> Option<&TokenMinter> {
        self.dev_minter.as_ref()
    }

    /// With no token key configured, the file holding the development
    /// secret (see [`crate::auth::dev_secret`]), which `switchboard token`
    /// reads to sign tokens for this server.
    pub fn dev_secret_file(&self) -> Option<&Path> {
        self.dev_secret_file.as_deref()
    }

    /// Whether it serves TLS (`wss://`, `https://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `listener` until `shutdown` resolves: the WebSocket and HTTP
    /// routes, the folder watch (hot reload) when on, and the room sweep;
    /// then closes every connection (1001), runs the plugins' shutdown
    /// hooks and removes the shadow folder.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let tls = self.tls;
        let addr = listener.local_addr().map_err(StartError::Address)?;
        let (http, ws) = if tls.is_some() {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        tracing::info!("listening on {http}://{addr} (WebSocket: {ws}://{addr}/ws)");
        let watch = self.config.watch;
        let debounce = Duration::from_millis(self.config.reload_debounce_ms);
        let actions_dir = self.config.actions.clone();
        let hub = Arc::new(crate::rooms::hub::Hub::new(
            self.config.outbound_queue_bytes,
        ));
        let mut auth = self.auth;
        let broker = broker_for(&self.config, &hub, &mut auth).await?;
        let state = Arc::new(ServerState::with_broker(
            self.config,
            self.registry,
            auth,
            self.limits,
            hub,
            broker,
        ));
        self.services.connect(&state);
        state.broker.set_request_handler(
            Arc::clone(&self.services) as Arc<dyn crate::cluster::NodeRequestHandler>
        );
        let _watch = if watch {
            let watch = crate::plugins::watch::start(
                Arc::clone(&state) as Arc<dyn crate::plugins::watch::Watched>,
                &actions_dir,
                debounce,
            )?;
            tracing::info!(folder = %actions_dir.display(), "watching for plugin changes (hot reload)");
            Some(watch)
        } else {
            None
        };
        crate::transport::listener::run(listener, Arc::clone(&state), tls, shutdown).await;
        state.registry.remove_shadow();
        Ok(())
    }
}

impl ServerBuilder {
    /// Checks the settings against the machine, loads the plugins, and
    /// logs the start-up warnings; the server is then ready to serve.
    pub fn build(self) -> Result<Server, StartError> {
        let mut config = self.config;
        if !config.actions.is_dir() {
            return Err(StartError::NoActionsFolder(config.actions));
        }
        let dev_secret_file = dev_secret(&mut config)?;
        let dev_minter = match &config.jwt_secret {
            Some(secret) if dev_secret_file.is_some() => {
                Some(TokenMinter::hs256(secret.expose().as_bytes()))
            }
            _ => None,
        };
        let tls = crate::transport::tls::from_config(&config)?;
        warn_about_origins(&config);
        let limits = connection_limits(&config);
        let verifier = JwtVerifier::from_config(&config)?;
        let mut auth = Authenticator::new(&config, Some(verifier));
        if config.token_endpoint {
            auth.set_endpoint_minter(endpoint_minter(&config)?);
        }
        let trust = trusted_folder(&config)?;
        let shadow_base = config
            .shadow_dir
            .clone()
            .unwrap_or_else(ShadowDir::default_base);
        let shadow = ShadowDir::create(&shadow_base, config.allow_unsafe_plugin_folder).map_err(
            |source| StartError::Shadow {
                base: shadow_base.clone(),
                source,
            },
        )?;
        let services = ServerServices::new();
        let settings = ReloadSettings {
            trust: Some(trust),
            services: Arc::clone(&services) as Arc<dyn crate::plugins::services::HostServices>,
            default_timeout: config.call_timeout(),
            max_generations: config.max_generations,
            protect_retired: config.reload_protect_retired,
            preflight_timeout: Some(Duration::from_millis(config.preflight_timeout_ms)),
            loader: Arc::new(crate::plugins::loader::Dlopen),
        };
        let registry = Registry::load(&config.actions, shadow, settings).map_err(|source| {
            StartError::ActionsFolder {
                folder: config.actions.clone(),
                source,
            }
        })?;
        {
            let snapshot = registry.snapshot();
            tracing::info!(
                plugins = snapshot.plugins.len(),
                refused = snapshot.refused.len(),
                folder = %config.actions.display(),
                "plugins loaded"
            );
            if snapshot.plugins.is_empty() && snapshot.refused.is_empty() {
                warn_about_empty_folder(&config.actions);
            }
        }
        Ok(Server {
            config,
            services,
            registry,
            auth,
            limits,
            dev_minter,
            dev_secret_file,
            tls,
        })
    }
}

/// With no key at all for a chain that verifies JWTs, uses this user's
/// development secret, made on first use (so the quickstart works with no
/// setup, and `switchboard token` signs for this server), and returns the
/// file it is kept in.
fn dev_secret(config: &mut Config) -> Result<Option<PathBuf>, StartError> {
    if config.has_jwt_keys() || !config.auth_chain.contains(&AuthStep::Jwt) {
        return Ok(None);
    }
    let file = dev_secret::location();
    let secret = dev_secret::load_or_create(&file)?;
    config.jwt_secret = Some(Secret::new(secret));
    Ok(Some(file))
}

/// The signer of `POST /token`'s tokens, once the settings it needs are
/// checked: an auth plugin to judge requests, the JWT step to accept the
/// tokens on the socket, and an HS256 secret to sign them.
fn endpoint_minter(config: &Config) -> Result<TokenMinter, StartError> {
    let refuse = |why: &str| {
        Err(StartError::TokenEndpoint(format!(
            "token_endpoint needs {why}"
        )))
    };
    if !config.auth_chain.contains(&AuthStep::Plugin) {
        return refuse("an auth plugin to judge requests: add \"plugin\" to auth_chain");
    }
    if !config.auth_chain.contains(&AuthStep::Jwt) {
        return refuse("the JWT step to accept its tokens: add \"jwt\" to auth_chain");
    }
    match &config.jwt_secret {
        Some(secret) => Ok(TokenMinter::hs256(secret.expose().as_bytes())),
        None => refuse("an HS256 secret to sign its tokens (jwt_secret or jwt_secret_file)"),
    }
}

/// Rooms and pushes: in memory, or shared through Redis when
/// `redis_url` is set (and then one-time tokens are too).
async fn broker_for(
    config: &Config,
    hub: &Arc<crate::rooms::hub::Hub>,
    auth: &mut Authenticator,
) -> Result<Arc<dyn crate::rooms::broker::Broker>, StartError> {
    let Some(url) = &config.redis_url else {
        let rooms = crate::state::local_rooms(config);
        return Ok(Arc::new(crate::rooms::broker::LocalBroker::new(
            rooms,
            Arc::clone(hub),
        )));
    };
    let node_id = match &config.node_id {
        Some(id) => id.clone(),
        None => format!(
            "node-{}",
            crate::auth::random_secret()?.get(..8).unwrap_or("0")
        ),
    };
    let settings = crate::cluster::ClusterSettings {
        redis_url: url.clone(),
        node_id,
        node_timeout: Duration::from_secs(config.node_timeout_secs),
        max_rooms: config.max_rooms,
    };
    let rules = crate::rooms::Rooms::new(&config.rooms, crate::cluster::rules_only_limits());
    let broker = crate::cluster::RedisBroker::start(&settings, rules, Arc::clone(hub)).await?;
    auth.share_one_time_tokens(broker.one_time_tokens());
    Ok(Arc::new(broker))
}

/// Says what to do when the actions folder loaded nothing, and, when it
/// holds plugin crates' sources (as the repository's `actions/` does), that
/// the server takes built files.
fn warn_about_empty_folder(folder: &Path) {
    let sources: Vec<String> = std::fs::read_dir(folder)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if sources.is_empty() {
        tracing::warn!(
            folder = %folder.display(),
            "no plugins in the actions folder: copy built plugin files (lib<name>.so) into it and they \
             load as they arrive"
        );
    } else {
        tracing::warn!(
            folder = %folder.display(),
            crates = %sources.join(", "),
            "the actions folder holds plugin source crates, not built plugins: serve loads built files \
             (lib<name>.so). Build them (cargo build --release) and serve a folder of the .so files, or \
             run `switchboard dev`, which builds these crates and hot-reloads them on save"
        );
    }
}

/// Warns when web pages on any site could open a WebSocket to a server
/// that others can reach.
fn warn_about_origins(config: &Config) {
    if config.auth_chain.contains(&AuthStep::Plugin) && config.allowed_origins.is_empty() {
        tracing::warn!(
            "auth_chain includes the plugin step but allowed_origins is empty: if the plugin trusts cookies, \
             any web page can open a signed-in WebSocket for its visitors; list your sites in allowed_origins"
        );
    } else if config.allowed_origins.is_empty() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "allowed_origins is empty and the server listens beyond this machine: a web page on any \
             site can open a WebSocket to it from its visitors' browsers; list your sites in \
             allowed_origins (or \"*\" to allow any and silence this warning)"
        );
    }
}

/// The connection bounds for this process's open-file limit (raised to
/// its hard limit first), with their warnings logged.
fn connection_limits(config: &Config) -> ConnectionLimits {
    let open_files = crate::sys::raise_open_file_limit();
    let (limits, warnings) = ConnectionLimits::resolve(config, open_files);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if config.auth_timeout_ms == 0 {
        tracing::info!(
            "auth_timeout_ms = 0: connections may stay without signing in, at most {} at once \
             ({} per address; max_anonymous_connections, max_anonymous_per_address)",
            limits.max_anonymous,
            limits.max_anonymous_per_address
        );
    }
    tracing::info!(
        max_connections = limits.max_connections,
        max_anonymous = limits.max_anonymous,
        max_anonymous_per_address = limits.max_anonymous_per_address,
        max_pending_handshakes = crate::limits::max_pending_handshakes(config, &limits),
        open_files = ?limits.open_files,
        "connection limits"
    );
    limits
}

/// The actions folder's trust rules, after checking the folder itself.
fn trusted_folder(config: &Config) -> Result<FolderTrust, StartError> {
    let unsafe_folder = |problem| StartError::UnsafeFolder {
        folder: config.actions.clone(),
        problem,
    };
    let trust = FolderTrust::new(&config.actions, config.allow_unsafe_plugin_folder)
        .map_err(unsafe_folder)?;
    match trust.check_folder() {
        Ok(()) => {}
        Err(problem) if config.allow_unsafe_plugin_folder => {
            tracing::warn!("loading plugins anyway (allow_unsafe_plugin_folder = true): {problem}");
        }
        Err(problem) => return Err(unsafe_folder(problem)),
    }
    Ok(trust)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh private folder under the system's temporary folder.
    fn private_folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-builder-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)));
        made.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }

    #[tokio::test]
    async fn a_server_runs_in_process_and_stops_when_told() {
        let actions = private_folder("actions");
        let config = Config {
            actions: actions.clone(),
            shadow_dir: Some(private_folder("shadow")),
            jwt_secret: Some(Secret::new("in-process-test-secret-0123")),
            ..Config::default()
        };
        let server = Server::builder(config)
            .build()
            .unwrap_or_else(|e| panic!("build: {e}"));
        assert!(server.dev_minter().is_none(), "a secret was configured");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let asked = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        assert!(asked.is_ok());
        let mut response = String::new();
        let read = stream.read_to_string(&mut response).await;
        assert!(read.is_ok() && response.ends_with("ok\n"), "{response}");
        let _ = stop.send(());
        let ended = serving.await;
        assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
        let _ = std::fs::remove_dir_all(actions);
    }

    #[test]
    fn a_missing_actions_folder_is_refused_with_how_to_fix_it() {
        let config = Config {
            actions: PathBuf::from("/definitely/not/here"),
            ..Config::default()
        };
        let refused = Server::builder(config).build();
        assert!(
            matches!(&refused, Err(StartError::NoActionsFolder(_))),
            "{refused:?}"
        );
    }
}
