//! `switchboard serve` and `switchboard dev`: the server from its merged
//! settings (the library's [`Server`]) on a tokio runtime of its own,
//! with the development banner and the shutdown signals.

use crate::args::{DevArgs, ServeArgs};
use crate::settings::serve_config;
use anyhow::Context;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use switchboard::auth::TokenMinter;
use switchboard::config::Config;
use switchboard::server::Server;

pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = serve_config(&args)?;
    let listener = bind(config.listen)?;
    serve_with(config, listener)
}

/// `serve` plus a watch on plugin sources that rebuilds and installs them.
pub(crate) fn dev(args: DevArgs) -> anyhow::Result<()> {
    use crate::dev::{DevOptions, DevWatch, default_actions_dir, resolve_crates};
    let DevArgs {
        serve,
        src,
        release,
    } = args;
    let cwd = std::env::current_dir().context("could not read the current folder")?;
    let crates = resolve_crates(&src, &cwd)?;
    let mut config = serve_config(&serve)?;
    if !serve.settings.gives("actions") {
        config.actions = default_actions_dir(&cwd);
    }
    if !config.watch {
        tracing::warn!("dev needs the actions folder watch to hot-reload; ignoring watch = false");
        config.watch = true;
    }
    let options = DevOptions {
        release,
        ..DevOptions::default()
    };
    // The port first: a port in use is said at once, not after the builds.
    let listener = bind(config.listen)?;
    let _watch = DevWatch::start(crates, &config.actions, options)?;
    serve_with(config, listener)
}

/// Takes the server's port before anything slow (loading plugins, building
/// them), so a port in use is reported at once. Connections that arrive
/// before the server is ready wait in the listen backlog.
fn bind(listen: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("could not listen on {listen}"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("could not listen on {listen}"))?;
    Ok(listener)
}

/// Serves an already merged config (`serve` and `dev`) on its bound port.
fn serve_with(config: Config, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let server = Server::builder(config).build()?;
    let blocking =
        server.config().max_inflight_calls + switchboard::auth::chain::MAX_PLUGIN_CALLS + 16;
    // Actions run on the server's own action pool; tokio's blocking pool
    // runs the plugins' join hooks (each holds one of `max_inflight_calls`
    // permits), auth plugin calls (at most MAX_PLUGIN_CALLS), and a few
    // housekeeping jobs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking)
        .thread_name("switchboard")
        // A worker going idle adds the calls it counted to `/metrics`, and
        // lets action threads sharing its core answer their calls first.
        .on_thread_park(|| {
            switchboard::metrics::flush_thread_tally();
            switchboard::action_threads::yield_to_pending_calls();
        })
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("could not hand the listening socket to the async runtime")?;
        if let (Some(minter), Some(file)) = (server.dev_minter(), server.dev_secret_file()) {
            let ws = if server.is_tls() { "wss" } else { "ws" };
            print_dev_banner(minter, file, ws, listener.local_addr()?)?;
        }
        server.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    });
    // Plugin calls past their deadline may still be running on blocking
    // threads; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Tells the person who started a server with no key configured how to
/// sign in: a ready token and URL, and how to mint tokens for other users.
pub(crate) fn print_dev_banner(
    minter: &TokenMinter,
    secret_file: &Path,
    ws: &str,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let token = minter.mint_for("dev", Duration::from_secs(24 * 3600))?;
    tracing::warn!(
        file = %secret_file.display(),
        "no jwt_secret configured: signing tokens with this user's development secret; \
         configure a secret (--jwt-secret-file) before others can reach this server"
    );
    let me = std::env::args()
        .next()
        .unwrap_or_else(|| "switchboard".into());
    println!("Development token (user \"dev\", valid 24 h):\n  {token}");
    println!("Connect:  {ws}://{addr}/ws?token={token}");
    println!(
        "Tokens for other users (signed with the development secret in {}):\n  {me} token --sub alice",
        secret_file.display()
    );
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
