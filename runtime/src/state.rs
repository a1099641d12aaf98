//! [`ServerState`]: what every connection shares: settings, the plugin
//! registry, token keys, limits and counters.

use crate::action_threads::ActionThreads;
use crate::anonymous::AnonymousSlots;
use crate::auth::Authenticator;
use crate::call_slots::CallSlots;
use crate::config::Config;
use crate::limits::ConnectionLimits;
use crate::plugins::Registry;
use crate::rooms::broker::{Broker, LocalBroker};
use crate::rooms::hub::Hub;
use crate::rooms::{RoomLimits, Rooms};
use crate::rpc::dispatch::PoolJob;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// State shared by the whole server. Read-mostly: the registry is a
/// lock-free snapshot and the counters are atomics.
#[derive(Debug)]
pub struct ServerState {
    /// The settings in force.
    pub config: Config,
    /// What can be called.
    pub registry: Registry,
    /// The chain of authenticators (JWT keys, auth plugin, replay cache).
    pub auth: Authenticator,
    /// Every open connection of this server, with its outbound queue.
    pub hub: Arc<Hub>,
    /// Rooms and pushes (in memory: this server's rooms, through `hub`).
    pub broker: Arc<dyn Broker>,
    /// Slots for the plugin calls running in the whole server
    /// (`max_inflight_calls`).
    pub inflight: CallSlots,
    /// The threads actions run on.
    pub action_threads: ActionThreads<PoolJob>,
    /// When the server started.
    pub started: Instant,
    /// The bounds on connections in force (settings checked against the
    /// open-file limit).
    pub limits: ConnectionLimits,
    /// Connections that have not signed in, in all and per address.
    pub anonymous: Arc<AnonymousSlots>,
    /// TCP connections not yet upgraded, in all and per address.
    pub pending: crate::transport::pending::PendingHandshakes,
    /// Each user's message allowance across its connections here.
    pub user_rates: crate::rpc::rates::UserRates,
    connections: AtomicUsize,
}

/// This server's in-memory rooms, under the configured rules and bounds.
pub fn local_rooms(config: &Config) -> Rooms {
    Rooms::new(
        &config.rooms,
        RoomLimits {
            max_rooms: config.max_rooms,
            max_history_bytes: config.max_history_bytes,
        },
    )
}

impl ServerState {
    /// State for a server with these settings, plugins, authenticators and
    /// connection bounds, its rooms in memory.
    pub fn new(
        config: Config,
        registry: Registry,
        auth: Authenticator,
        limits: ConnectionLimits,
    ) -> ServerState {
        let hub = Arc::new(Hub::new(config.outbound_queue_bytes));
        let rooms = local_rooms(&config);
        let broker = Arc::new(LocalBroker::new(rooms, Arc::clone(&hub)));
        ServerState::with_broker(config, registry, auth, limits, hub, broker)
    }

    /// State whose rooms and pushes go through `broker` (which delivers to
    /// this server's connections through `hub`).
    pub fn with_broker(
        config: Config,
        registry: Registry,
        auth: Authenticator,
        limits: ConnectionLimits,
        hub: Arc<Hub>,
        broker: Arc<dyn Broker>,
    ) -> ServerState {
        ServerState {
            broker,
            hub,
            anonymous: Arc::new(AnonymousSlots::new(
                limits.max_anonymous,
                limits.max_anonymous_per_address,
            )),
            pending: crate::transport::pending::PendingHandshakes::new(
                crate::limits::max_pending_handshakes(&config, &limits),
                config.max_pending_per_address,
            ),
            limits,
            inflight: CallSlots::new(config.max_inflight_calls),
            // One per call slot: a call never waits for a thread while
            // another slot's call blocks.
            action_threads: ActionThreads::new(config.max_inflight_calls),
            user_rates: crate::rpc::rates::UserRates::new(
                config.user_message_rate,
                config.user_message_burst,
            ),
            config,
            registry,
            auth,
            started: Instant::now(),
            connections: AtomicUsize::new(0),
        }
    }

    /// Open WebSocket connections now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard drops, but only if
    /// fewer than the connection limit are counted; `None` when full. The check
    /// and the count are one atomic step, so a burst of upgrades cannot
    /// pass the limit: take this guard before answering an upgrade and hold
    /// it in the connection's task (dropping it, if the upgrade fails,
    /// frees the slot).
    pub fn reserve_connection(self: &Arc<Self>) -> Option<ConnectionCount> {
        increment_below(&self.connections, self.limits.max_connections)
            .then(|| ConnectionCount(Arc::clone(self)))
    }
}

impl crate::plugins::watch::Watched for ServerState {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Tells subscribed clients about each change (`actions.changed`).
    fn changed(&self, changes: Vec<crate::plugins::generations::ActionsChanged>) {
        for change in changes {
            match serde_json::to_value(&change) {
                Ok(data) => {
                    let told = self.hub.notify_event("actions.changed", &data);
                    tracing::debug!(clients = told, "actions.changed sent");
                }
                Err(e) => tracing::warn!("could not describe the change: {e}"),
            }
        }
    }
}

/// Holds one connection in [`ServerState`]'s count until dropped.
#[derive(Debug)]
pub struct ConnectionCount(Arc<ServerState>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Adds one to `counter` if it is below `max`, in one atomic step.
fn increment_below(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_stop_at_the_limit() {
        let counter = AtomicUsize::new(0);
        assert!(increment_below(&counter, 2));
        assert!(increment_below(&counter, 2));
        assert!(!increment_below(&counter, 2));
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        counter.fetch_sub(1, Ordering::Relaxed);
        assert!(increment_below(&counter, 2));
        assert!(!increment_below(&AtomicUsize::new(0), 0));
    }
}
