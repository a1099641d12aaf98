//! [`ServerServices`]: the server's side of the plugins' host services
//! ([`HostServices`]): pushes, publishes, server-side joins, connection
//! info and data, calls to clients, all acting on one server's hub and
//! rooms.
//!
//! Plugins are loaded before the server's shared state exists (the state
//! holds the plugin registry), so the services are made first and
//! [`ServerServices::connect`]ed to the state once it is built; until then,
//! and after the server is gone, every service reports failure.

use crate::plugins::services::{ClientCall, HostServices};
use crate::rooms::event_frame;
use crate::rooms::hub::{CallOutcome, Outgoing};
use crate::rooms::policy::check_name;
use crate::state::ServerState;
use action_api::abi::host_query;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// One server's services to its plugins.
#[derive(Debug, Default)]
pub struct ServerServices {
    state: OnceLock<Weak<ServerState>>,
}

impl ServerServices {
    /// Services not yet connected to a server.
    pub fn new() -> Arc<ServerServices> {
        Arc::new(ServerServices::default())
    }

    /// Connects the services to the server's state (once).
    pub fn connect(&self, state: &Arc<ServerState>) {
        let _ = self.state.set(Arc::downgrade(state));
    }

    /// Runs `f` with the server; `fallback` while there is none.
    fn with_server<T>(&self, fallback: T, f: impl FnOnce(&ServerState) -> T) -> T {
        match self.state.get().and_then(Weak::upgrade) {
            Some(state) => f(&state),
            None => fallback,
        }
    }
}

/// An `rpc.event` push of `data` (valid JSON: the caller checked).
fn event(event: &str, data: &str) -> Outgoing {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    event_frame(event, &data)
}

impl HostServices for ServerServices {
    fn send_to_conn(&self, conn_id: u64, name: &str, data: &str) -> bool {
        self.with_server(false, |s| s.hub.send_to_conn(conn_id, event(name, data)))
    }

    fn send_to_user(&self, user: &str, name: &str, data: &str) -> u64 {
        self.with_server(0, |s| s.hub.send_to_user(user, &event(name, data)) as u64)
    }

    fn broadcast(&self, name: &str, data: &str, except: &[u64], signed_in_only: bool) -> u64 {
        self.with_server(0, |s| {
            s.hub.broadcast(&event(name, data), except, signed_in_only) as u64
        })
    }

    fn publish(&self, room: &str, data: &str) -> u64 {
        if check_name(room).is_err() {
            return 0;
        }
        self.with_server(0, |s| {
            let rule = Arc::clone(s.rooms.rule(room));
            match s.rooms.publish(&s.hub, room, &rule, data) {
                Ok((offset, _)) => offset,
                Err(e) => {
                    tracing::warn!(room, "a plugin's publish was refused: {}", e.message);
                    0
                }
            }
        })
    }

    fn set_membership(&self, conn_id: u64, room: &str, join: bool) -> bool {
        if check_name(room).is_err() {
            return false;
        }
        self.with_server(false, |s| {
            if !join {
                return s.rooms.leave(&s.hub, room, conn_id);
            }
            let Some(handle) = s.hub.get(conn_id) else {
                return false;
            };
            let rule = Arc::clone(s.rooms.rule(room));
            match s.rooms.join(&s.hub, room, &rule, &handle, None) {
                Ok(_) => true,
                Err(e) => {
                    tracing::info!(
                        conn = conn_id,
                        room,
                        "a plugin's join was refused: {}",
                        e.message
                    );
                    false
                }
            }
        })
    }

    fn query(&self, what: u32, conn_id: u64, key: &str) -> Option<String> {
        self.with_server(None, |s| {
            if what == host_query::ROOM_MEMBERS {
                return serde_json::to_string(&s.rooms.presence(key)).ok();
            }
            let handle = s.hub.get(conn_id)?;
            match what {
                host_query::CONN_INFO => Some(
                    serde_json::json!({
                        "conn": conn_id,
                        "user": handle.user.as_deref(),
                        "connected_at": handle.connected_at,
                        "remote_addr": &*handle.remote_addr,
                        "rooms": s.rooms.rooms_of(conn_id),
                    })
                    .to_string(),
                ),
                host_query::CONN_DATA => handle.flow.data.lock().ok()?.get(key).cloned(),
                _ => None,
            }
        })
    }

    fn set_conn_data(&self, conn_id: u64, key: &str, value: Option<&str>) -> bool {
        self.with_server(false, |s| {
            let Some(handle) = s.hub.get(conn_id) else {
                return false;
            };
            let Ok(mut data) = handle.flow.data.lock() else {
                return false;
            };
            match value {
                Some(value) => {
                    data.insert(key.to_owned(), value.to_owned());
                }
                None => {
                    data.remove(key);
                }
            }
            true
        })
    }

    fn call_client(
        &self,
        conn_id: u64,
        method: &str,
        params: &str,
        timeout: Duration,
    ) -> ClientCall {
        self.with_server(ClientCall::Gone, |s| {
            match s.hub.call_client(conn_id, method, params, timeout) {
                CallOutcome::Answered(answer) => ClientCall::Answered(answer),
                CallOutcome::TimedOut => ClientCall::TimedOut,
                CallOutcome::Gone => ClientCall::Gone,
            }
        })
    }
}
