//! [`ServerState`]: what every connection shares: settings, the plugin
//! registry, token keys, limits and counters.

use crate::auth::TokenKeys;
use crate::config::Config;
use crate::plugins::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tokio::sync::Semaphore;

/// State shared by the whole server. Read-mostly: the registry is a
/// lock-free snapshot and the counters are atomics.
#[derive(Debug)]
pub struct ServerState {
    /// The settings in force.
    pub config: Config,
    /// What can be called.
    pub registry: Registry,
    /// Keys for client tokens.
    pub keys: TokenKeys,
    /// Permits for action calls running in the whole server.
    pub inflight: Arc<Semaphore>,
    /// When the server started.
    pub started: Instant,
    connections: AtomicUsize,
}

impl ServerState {
    /// State for a server with these settings, plugins and keys.
    pub fn new(config: Config, registry: Registry, keys: TokenKeys) -> ServerState {
        ServerState {
            inflight: Arc::new(Semaphore::new(config.max_inflight_calls)),
            config,
            registry,
            keys,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
        }
    }

    /// Open WebSocket connections now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard drops.
    pub fn count_connection(self: &Arc<Self>) -> ConnectionCount {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(Arc::clone(self))
    }
}

/// Holds one connection in [`ServerState`]'s count.
#[derive(Debug)]
pub struct ConnectionCount(Arc<ServerState>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}
