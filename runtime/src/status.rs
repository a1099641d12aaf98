//! The `/status` document: plugins (file, version, generation, actions),
//! files that were refused and why, every plugin generation and its state,
//! connection count, uptime, every bound beside its use, and in a
//! cluster the broker's state.

use crate::plugins::GenerationView;
use crate::state::ServerState;
use serde::Serialize;
use std::path::Path;
use std::time::UNIX_EPOCH;

#[derive(Serialize)]
struct Status<'a> {
    server: &'static str,
    version: &'static str,
    uptime_secs: u64,
    connections: usize,
    inflight_calls: usize,
    rooms: usize,
    slow_consumers_closed: u64,
    /// Each bound a client can push against, beside its use.
    bounds: serde_json::Value,
    plugins: Vec<PluginStatus<'a>>,
    refused: Vec<Refused<'a>>,
    /// Every generation: serving, draining, retired but mapped, unmapped.
    generations: Vec<GenerationView>,
    /// In a cluster: this node, its link to Redis, the last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<serde_json::Value>,
    /// Requests for this document (or other admin data) refused.
    admin_refused: u64,
}

#[derive(Serialize)]
struct PluginStatus<'a> {
    name: &'a str,
    version: &'a str,
    file: &'a Path,
    generation: u64,
    hash: &'a str,
    loaded_at: u64,
    actions: Vec<ActionStatus<'a>>,
}

#[derive(Serialize)]
struct ActionStatus<'a> {
    path: &'a str,
    public: bool,
    timeout_ms: u128,
}

#[derive(Serialize)]
struct Refused<'a> {
    file: &'a Path,
    kind: crate::plugins::RefusalKind,
    reason: &'a str,
}

/// Every bound with its use now.
fn bounds(state: &ServerState) -> serde_json::Value {
    let config = &state.config;
    let limits = &state.limits;
    let rooms = state.broker.usage();
    serde_json::json!({
        "connections": {
            "open": state.connections(),
            "max": limits.max_connections,
            "open_file_limit": limits.open_files,
        },
        "pending_handshakes": {
            "open": state.pending.open(),
            "max": state.pending.max(),
            "max_per_address": state.pending.max_per_address(),
            "refused": state.pending.refused(),
        },
        "anonymous_connections": {
            "open": state.anonymous.count(),
            "max": state.anonymous.max_total(),
            "max_per_address": limits.max_anonymous_per_address,
        },
        "rooms": {
            "open": rooms.rooms,
            "max": rooms.max_rooms,
            "idle_evicted": rooms.idle_rooms_evicted,
            "refused": rooms.rooms_refused,
            "max_per_connection": config.max_rooms_per_connection,
            "max_creations_per_connection_per_minute": config.max_room_creations_per_minute,
            "creations_rate_limited": rooms.creations_rate_limited,
        },
        "history_bytes": {
            "used": rooms.history_bytes,
            "max": rooms.max_history_bytes,
            "messages_evicted": rooms.history_messages_evicted,
        },
        "outbound_queue": {
            "max_frames": config.outbound_queue,
            "max_bytes": state.hub.max_queue_bytes(),
            "slow_consumers_closed": state.hub.slow_consumers(),
            "stalled_writes_dropped": state.hub.stalled_writes(),
        },
        "inflight_calls": {
            "running": state.inflight.taken(),
            "max": config.max_inflight_calls,
            "max_per_connection": config.max_inflight_per_connection,
        },
        "revocations": {
            "held": state.auth.revocations().len(),
            "max": crate::auth::revocations::MAX_REVOCATIONS,
        },
        "rate_limited_users": state.user_rates.len(),
        "max_message_bytes": config.max_message_bytes,
        "max_batch": config.max_batch,
    })
}

/// Renders `/status` as JSON.
pub fn render(state: &ServerState) -> String {
    let snapshot = state.registry.snapshot();
    let plugins = snapshot
        .plugins
        .iter()
        .map(|plugin| PluginStatus {
            name: &plugin.name,
            version: &plugin.version,
            file: &plugin.file,
            generation: plugin.generation,
            hash: &plugin.hash,
            loaded_at: plugin
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            actions: plugin
                .actions
                .iter()
                .map(|a| ActionStatus {
                    path: &a.path,
                    public: a.public,
                    timeout_ms: a
                        .timeout
                        .unwrap_or_else(|| state.config.call_timeout())
                        .as_millis(),
                })
                .collect(),
        })
        .collect();
    let refused = snapshot
        .refused
        .iter()
        .map(|r| Refused {
            file: &r.file,
            kind: r.kind,
            reason: &r.reason,
        })
        .collect();
    let status = Status {
        server: "switchboard",
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        connections: state.connections(),
        rooms: state.broker.usage().rooms,
        slow_consumers_closed: state.hub.slow_consumers(),
        bounds: bounds(state),
        inflight_calls: state.inflight.taken(),
        plugins,
        refused,
        generations: state.registry.generations(),
        cluster: state.broker.cluster_status(),
        admin_refused: crate::transport::admin::REFUSED.load(std::sync::atomic::Ordering::Relaxed),
    };
    serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
