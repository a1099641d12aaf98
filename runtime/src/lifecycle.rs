//! Lifecycle events for plugins that asked for them: connect, sign-in,
//! refusal, disconnect, error. Emitting costs nothing when no plugin
//! listens: the details are built only for plugins that want the kind.

use crate::plugins::Registry;
use crate::plugins::events::OwnedEvent;
pub use action_api::abi::event_kind::{AUTH_FAILURE, AUTH_SUCCESS, CONNECT, DISCONNECT, ERROR};
use std::sync::Arc;

/// Sends an event of `kind` about `conn_id` to every plugin that wants it;
/// `detail` builds the JSON details, once, only if someone listens.
pub fn emit(
    registry: &Registry,
    kind: u32,
    conn_id: u64,
    user: Option<&Arc<str>>,
    detail: impl FnOnce() -> serde_json::Value,
) {
    let snapshot = registry.snapshot();
    let mut listeners = snapshot
        .plugins
        .iter()
        .filter_map(|p| p.events.as_ref())
        .filter(|e| e.wants(kind))
        .peekable();
    if listeners.peek().is_none() {
        return;
    }
    let detail = detail().to_string();
    for events in listeners {
        events.send(OwnedEvent {
            kind,
            conn_id,
            user: user.cloned(),
            detail: detail.clone(),
        });
    }
}
