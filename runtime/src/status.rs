//! The `/status` document: plugins (file, version, generation, actions),
//! files that were refused and why, every plugin generation and its state,
//! connection count, uptime.

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
    plugins: Vec<PluginStatus<'a>>,
    refused: Vec<Refused<'a>>,
    /// Every generation: serving, draining, retired but mapped, unmapped.
    generations: Vec<GenerationView>,
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
    reason: &'a str,
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
            reason: &r.reason,
        })
        .collect();
    let status = Status {
        server: "switchboard",
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        connections: state.connections(),
        rooms: state.rooms.count(),
        slow_consumers_closed: state.hub.slow_consumers(),
        inflight_calls: state
            .config
            .max_inflight_calls
            .saturating_sub(state.inflight.available_permits()),
        plugins,
        refused,
        generations: state.registry.generations(),
    };
    serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}
