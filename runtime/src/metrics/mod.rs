//! `/metrics`: the server's counters and histograms in the Prometheus text
//! format (OpenMetrics), through the Prometheus project's own client crate.
//!
//! Counted as it happens (one process-wide [`Metrics`], see [`global`]):
//! connections opened and closed by close code; calls by action and
//! outcome, with latency histograms; publishes, deliveries, recoveries;
//! reloads by outcome with swap and preflight durations; sign-in failures
//! by reason; rate-limit refusals by limit; HTTP API calls. Read at each
//! scrape from the server's state: connections open, calls in flight,
//! rooms and members, generations by state, queue overflows, admin
//! refusals.
//!
//! Successful calls are counted per thread and added in bursts (`tally`):
//! no lock and no atomic operation per call.
//!
//! Labels are bounded: an `action` is a path of a plugin that was loaded
//! (or a built-in, or `unknown`); an outcome is `ok`, a protocol code or
//! `action_error`; no label ever holds a room name, a user or a client's
//! method name.

mod tally;

pub use tally::{Latency, flush_thread_tally};

use crate::rpc::error::ErrorCode;
use crate::state::ServerState;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

/// Reload step buckets, in seconds: 100 µs to 30 s.
const RELOAD_BUCKETS: [f64; 11] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
];

/// The built-in methods, which are labelled by name.
const BUILTINS: [&str; 9] = [
    "rpc.ping",
    "rpc.auth",
    "rpc.actions",
    "rpc.join",
    "rpc.leave",
    "rpc.leave_all",
    "rpc.publish",
    "rpc.presence",
    "rpc.subscribe",
];

/// An action path as a label value, shared rather than copied per call.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ActionName(Arc<str>);

impl EncodeLabelValue for ActionName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    action: ActionName,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: ActionName,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// One action's handles: counted on every call without a lookup.
#[derive(Debug, Clone)]
pub struct ActionMetrics {
    name: ActionName,
    ok: Counter,
    latency: Latency,
}

impl ActionMetrics {
    /// Counts one call that took `elapsed`, ok or failed with `code`
    /// (`None`: the action's own error). A success is counted in the
    /// thread's tally first, and reaches the shared metrics before its
    /// reply's burst is flushed to the socket (see `tally`).
    pub fn record(&self, elapsed: Duration, outcome: Result<(), Option<ErrorCode>>) {
        match outcome {
            Ok(()) => tally::count_success(&self.ok, &self.latency, elapsed),
            Err(code) => {
                self.latency.observe(elapsed);
                global()
                    .calls
                    .get_or_create(&CallLabels {
                        action: self.name.clone(),
                        outcome: outcome_label(code),
                    })
                    .inc();
            }
        }
    }
}

/// Every counter and histogram of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_opened: Counter,
    connections_closed: Family<CodeLabels, Counter>,
    connections_dropped: Counter,
    connections_closed_by_client: Counter,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<ActionLabels, Latency>,
    actions: Mutex<HashMap<Arc<str>, ActionMetrics>>,
    /// The built-ins' handles, then `unknown`'s.
    builtins: std::sync::OnceLock<Vec<(&'static str, ActionMetrics)>>,
    publishes: Counter,
    deliveries: Counter,
    recoveries: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    swap_seconds: Histogram,
    preflight_seconds: Histogram,
    auth_failures: Family<ReasonLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    api_calls: Family<MethodLabels, Counter>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics (one server per process).
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let metrics = Metrics {
            connections_opened: Counter::default(),
            connections_closed: Family::default(),
            connections_dropped: Counter::default(),
            connections_closed_by_client: Counter::default(),
            calls: Family::default(),
            call_seconds: Family::default(),
            actions: Mutex::new(HashMap::new()),
            builtins: std::sync::OnceLock::new(),
            publishes: Counter::default(),
            deliveries: Counter::default(),
            recoveries: Family::default(),
            reloads: Family::default(),
            swap_seconds: Histogram::new(RELOAD_BUCKETS),
            preflight_seconds: Histogram::new(RELOAD_BUCKETS),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            api_calls: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_opened",
            "WebSocket connections opened (upgrades completed)",
            metrics.connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "WebSocket connections the server closed, by close code",
            metrics.connections_closed.clone(),
        );
        registry.register(
            "connections_dropped",
            "WebSocket connections that ended without a close handshake (peer gone, write stalled, no pong)",
            metrics.connections_dropped.clone(),
        );
        registry.register(
            "connections_closed_by_client",
            "WebSocket connections the client closed",
            metrics.connections_closed_by_client.clone(),
        );
        registry.register(
            "calls",
            "Calls answered, by action and outcome (ok, a protocol error code, or action_error)",
            metrics.calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time from a call's dispatch to its answer, by action",
            metrics.call_seconds.clone(),
        );
        registry.register(
            "publishes",
            "Messages published to rooms (by clients, plugins and the HTTP API)",
            metrics.publishes.clone(),
        );
        registry.register(
            "deliveries",
            "Room messages queued for members of this server",
            metrics.deliveries.clone(),
        );
        registry.register(
            "recoveries",
            "Joins with since, by result (recovered, not_recovered)",
            metrics.recoveries.clone(),
        );
        registry.register(
            "reloads",
            "Plugin files taken after a change, by result (loaded, refused, removed)",
            metrics.reloads.clone(),
        );
        registry.register(
            "reload_swap_duration_seconds",
            "Time to swap a new generation in for callers",
            metrics.swap_seconds.clone(),
        );
        registry.register(
            "preflight_duration_seconds",
            "Time a plugin's preflight check (in a child process) took",
            metrics.preflight_seconds.clone(),
        );
        registry.register(
            "auth_failures",
            "Sign-ins refused, by reason",
            metrics.auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Messages and calls refused with -32004, by limit (connection, user, action, publish)",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "api_calls",
            "HTTP API calls, by method and outcome",
            metrics.api_calls.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The handles of action (or built-in) `path`, made on first use.
    pub fn action(&self, path: &str) -> ActionMetrics {
        let mut actions = self.actions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = actions.get(path) {
            return found.clone();
        }
        let name = ActionName(Arc::from(path));
        let made = ActionMetrics {
            ok: self
                .calls
                .get_or_create(&CallLabels {
                    action: name.clone(),
                    outcome: "ok",
                })
                .clone(),
            latency: self
                .call_seconds
                .get_or_create(&ActionLabels {
                    action: name.clone(),
                })
                .clone(),
            name,
        };
        actions.insert(Arc::from(path), made.clone());
        made
    }

    /// The handles of a built-in method, or of `unknown` (any other
    /// `rpc.` name: never a client's own string).
    /// Made once, so a built-in call takes no lock and no map lookup.
    pub fn builtin(&self, method: &str) -> &ActionMetrics {
        let handles = self.builtins.get_or_init(|| {
            BUILTINS
                .iter()
                .chain(std::iter::once(&"unknown"))
                .map(|name| (*name, self.action(name)))
                .collect()
        });
        let (_, unknown) = &handles[BUILTINS.len()];
        handles
            .iter()
            .find(|(name, _)| *name == method)
            .map_or(unknown, |(_, handles)| handles)
    }

    /// Counts a completed upgrade.
    pub fn connection_opened(&self) {
        self.connections_opened.inc();
    }

    /// Counts a connection the server closed with `code`.
    pub fn connection_closed(&self, code: u16) {
        self.connections_closed
            .get_or_create(&CodeLabels { code })
            .inc();
    }

    /// Counts a connection that ended other than by the server's close:
    /// the client closed it (`by_client`), or it was dropped.
    pub fn connection_ended_without_server_close(&self, by_client: bool) {
        if by_client {
            self.connections_closed_by_client.inc();
        } else {
            self.connections_dropped.inc();
        }
    }

    /// Counts a publish queued for `delivered` members here.
    pub fn published(&self, delivered: usize) {
        self.publishes.inc();
        self.deliveries.inc_by(delivered as u64);
    }

    /// Counts room messages delivered here that another node published.
    pub fn delivered(&self, count: usize) {
        self.deliveries.inc_by(count as u64);
    }

    /// Counts a join with `since`.
    pub fn recovery(&self, recovered: bool) {
        let result = if recovered {
            "recovered"
        } else {
            "not_recovered"
        };
        self.recoveries
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a plugin file loaded (swapped in, taking `swap`) or refused.
    pub fn reload(&self, swap: Option<Duration>) {
        let result = match swap {
            Some(swap) => {
                self.swap_seconds.observe(swap.as_secs_f64());
                "loaded"
            }
            None => "refused",
        };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a plugin file removed from the folder.
    pub fn plugin_removed(&self) {
        self.reloads
            .get_or_create(&ResultLabels { result: "removed" })
            .inc();
    }

    /// Records how long a preflight check took.
    pub fn preflight(&self, took: Duration) {
        self.preflight_seconds.observe(took.as_secs_f64());
    }

    /// Counts a refused sign-in.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a refusal by rate limit `limit`.
    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// Counts an HTTP API call of `method` (a known method's name, or
    /// `unknown`), failed with `error` if it did.
    pub fn api_call(&self, method: &'static str, error: Option<&crate::rpc::error::RpcError>) {
        let outcome = match error {
            None => "ok",
            Some(e) => outcome_label(Some(e.code)),
        };
        self.api_calls
            .get_or_create(&MethodLabels { method, outcome })
            .inc();
    }

    /// The text exposition: what was counted, then the state now.
    pub fn render(&self, state: &ServerState) -> String {
        let mut out = String::new();
        let now = now_registry(state);
        let encoded = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &now))
            .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
        if let Err(e) = encoded {
            tracing::error!("metrics could not be encoded: {e}");
        }
        out
    }
}

/// The gauges read from the server's state at a scrape.
fn now_registry(state: &ServerState) -> Registry {
    let mut registry = Registry::with_prefix("switchboard");
    let gauge = |value: usize| {
        let gauge: Gauge = Gauge::default();
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge
    };
    let counter = |value: u64| {
        let counter: Counter = Counter::default();
        counter.inc_by(value);
        counter
    };
    let usage = state.broker.usage();
    registry.register(
        "connections_open",
        "WebSocket connections open now",
        gauge(state.connections()),
    );
    registry.register(
        "calls_in_flight",
        "Pool calls running now",
        gauge(state.inflight.taken()),
    );
    registry.register("rooms", "Rooms held by this server now", gauge(usage.rooms));
    registry.register(
        "room_members",
        "Room memberships of this server's connections now",
        gauge(state.broker.membership_count()),
    );
    registry.register(
        "history_bytes",
        "Bytes of room history kept now",
        gauge(usage.history_bytes),
    );
    registry.register(
        "outbound_queue_overflows",
        "Connections closed with 4008: their outbound queue overflowed",
        counter(state.hub.slow_consumers()),
    );
    registry.register(
        "write_stalls",
        "Connections dropped because a write stalled past write_timeout_ms",
        counter(state.hub.stalled_writes()),
    );
    registry.register(
        "admin_refused",
        "Requests to /status, /api or /metrics refused for want of the admin credential",
        counter(crate::transport::admin::REFUSED.load(std::sync::atomic::Ordering::Relaxed)),
    );
    let generations: Family<StateLabels, Gauge> = Family::default();
    for view in state.registry.generations() {
        generations
            .get_or_create(&StateLabels {
                state: view.state.name(),
            })
            .inc();
    }
    registry.register(
        "generations",
        "Plugin generations, by state (serving, draining, retired, unmapped)",
        generations,
    );
    registry
}

/// An outcome as a label: `ok`, a protocol code, or `action_error`.
fn outcome_label(code: Option<ErrorCode>) -> &'static str {
    match code {
        None => "action_error",
        Some(ErrorCode::ParseError) => "-32700",
        Some(ErrorCode::InvalidRequest) => "-32600",
        Some(ErrorCode::MethodNotFound) => "-32601",
        Some(ErrorCode::InvalidParams) => "-32602",
        Some(ErrorCode::Internal) => "-32603",
        Some(ErrorCode::Unauthenticated) => "-32001",
        Some(ErrorCode::Forbidden) => "-32002",
        Some(ErrorCode::Timeout) => "-32003",
        Some(ErrorCode::RateLimited) => "-32004",
        Some(ErrorCode::ActionFailed) => "-32005",
        Some(ErrorCode::Overloaded) => "-32006",
    }
}
