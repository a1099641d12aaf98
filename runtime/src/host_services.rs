//! [`ServerServices`]: the server's side of the plugins' host services
//! ([`HostServices`]): pushes, publishes, server-side joins, connection
//! info and data, calls to clients, acting on the server's broker and hub.
//!
//! Host services are plain calls from a plugin's thread (or, for an
//! inline action, a runtime worker) that answer at once; a broker's answer
//! that is not ready (a cluster broker waiting on Redis) is waited for on
//! the server's runtime ([`wait_on`]). In a cluster, what is asked about
//! another node's connection is asked of that node, which does it with its
//! own services ([`NodeRequestHandler`]).
//!
//! Plugins are loaded before the server's shared state exists (the state
//! holds the plugin registry), so the services are made first and
//! [`ServerServices::connect`]ed to the state once it is built; until then,
//! and after the server is gone, every service reports failure.

use crate::cluster::{NodeAnswer, NodeRequest, NodeRequestHandler};
use crate::plugins::services::{ClientCall, HostServices};
use crate::rooms::event_frame;
use crate::rooms::hub::{CallOutcome, Outgoing};
use crate::rooms::policy::check_name;
use crate::state::ServerState;
use action_api::abi::host_query;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};

/// One server's services to its plugins.
#[derive(Debug, Default)]
pub struct ServerServices {
    state: OnceLock<Weak<ServerState>>,
    runtime: OnceLock<Handle>,
}

impl ServerServices {
    /// Services not yet connected to a server.
    pub fn new() -> Arc<ServerServices> {
        Arc::new(ServerServices::default())
    }

    /// Connects the services to the server's state (once), and to the
    /// runtime it runs on when called on one.
    pub fn connect(&self, state: &Arc<ServerState>) {
        let _ = self.state.set(Arc::downgrade(state));
        if let Ok(runtime) = Handle::try_current() {
            let _ = self.runtime.set(runtime);
        }
    }

    /// The broker's answer, waited for if need be; `None` (logged) when it
    /// cannot be waited for here.
    fn wait<T>(&self, future: BoxFuture<'_, T>) -> Option<T> {
        let answer = wait_on(self.runtime.get(), future);
        if answer.is_none() {
            tracing::error!(
                "a plugin's host call needs an answer the server cannot wait for on this thread"
            );
        }
        answer
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
        self.with_server(false, |s| s.broker.send_to_conn(conn_id, event(name, data)))
    }

    fn send_to_user(&self, user: &str, name: &str, data: &str) -> u64 {
        self.with_server(0, |s| {
            s.broker.send_to_user(user, &event(name, data)) as u64
        })
    }

    fn broadcast(&self, name: &str, data: &str, except: &[u64], signed_in_only: bool) -> u64 {
        self.with_server(0, |s| {
            s.broker
                .broadcast(&event(name, data), except, signed_in_only) as u64
        })
    }

    fn publish(&self, room: &str, data: &str) -> u64 {
        if check_name(room).is_err() {
            return 0;
        }
        self.with_server(0, |s| {
            let rule = s.broker.rule(room);
            match self.wait(s.broker.publish(room, &rule, data)) {
                Some(Ok(published)) => published.offset,
                Some(Err(e)) => {
                    tracing::warn!(room, "a plugin's publish was refused: {}", e.message);
                    0
                }
                None => 0,
            }
        })
    }

    fn set_membership(&self, conn_id: u64, room: &str, join: bool) -> bool {
        if check_name(room).is_err() {
            return false;
        }
        self.with_server(false, |s| {
            if s.hub.get(conn_id).is_none() {
                let request = NodeRequest::Membership {
                    room: room.to_owned(),
                    join,
                };
                return matches!(
                    self.ask_node(s, conn_id, request, NODE_REQUEST_TIMEOUT),
                    Some(NodeAnswer::Done(true))
                );
            }
            if !join {
                return self.wait(s.broker.leave(room, conn_id)).unwrap_or(false);
            }
            let Some(handle) = s.hub.get(conn_id) else {
                return false;
            };
            let rule = s.broker.rule(room);
            match self.wait(s.broker.join(room, &rule, &handle, None)) {
                Some(Ok(_)) => true,
                None => false,
                Some(Err(e)) => {
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
                let members = self.wait(s.broker.presence(key))?;
                return serde_json::to_string(&members).ok();
            }
            let Some(handle) = s.hub.get(conn_id) else {
                let request = match what {
                    host_query::CONN_INFO => NodeRequest::ConnInfo,
                    host_query::CONN_DATA => NodeRequest::ConnData {
                        key: key.to_owned(),
                    },
                    _ => return None,
                };
                return match self.ask_node(s, conn_id, request, NODE_REQUEST_TIMEOUT) {
                    Some(NodeAnswer::Text(text)) => text,
                    _ => None,
                };
            };
            match what {
                host_query::CONN_INFO => Some(
                    serde_json::json!({
                        "conn": conn_id,
                        "user": handle.user.as_deref(),
                        "connected_at": handle.connected_at,
                        "remote_addr": &*handle.remote_addr,
                        "rooms": s.broker.rooms_of(conn_id),
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
                let request = NodeRequest::SetData {
                    key: key.to_owned(),
                    value: value.map(str::to_owned),
                };
                return matches!(
                    self.ask_node(s, conn_id, request, NODE_REQUEST_TIMEOUT),
                    Some(NodeAnswer::Done(true))
                );
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
            if s.hub.get(conn_id).is_none() {
                let request = NodeRequest::CallClient {
                    method: method.to_owned(),
                    params: params.to_owned(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                };
                // The other node waits `timeout` for its client; then its
                // answer has to come back.
                let wait = timeout + NODE_REQUEST_TIMEOUT;
                return match self.ask_node(s, conn_id, request, wait) {
                    Some(NodeAnswer::Answered(answer)) => ClientCall::Answered(answer),
                    Some(NodeAnswer::TimedOut) => ClientCall::TimedOut,
                    _ => ClientCall::Gone,
                };
            }
            match s.hub.call_client(conn_id, method, params, timeout) {
                CallOutcome::Answered(answer) => ClientCall::Answered(answer),
                CallOutcome::TimedOut => ClientCall::TimedOut,
                CallOutcome::Gone => ClientCall::Gone,
            }
        })
    }
}

/// How long a request to another node of a cluster (about one of its
/// connections) may take.
const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

impl ServerServices {
    /// In a cluster, asks the node holding `conn_id` (not this one) to do
    /// `request`; `None` when it is no other node's, or cannot be waited
    /// for here.
    fn ask_node(
        &self,
        state: &ServerState,
        conn_id: u64,
        request: NodeRequest,
        timeout: Duration,
    ) -> Option<NodeAnswer> {
        let asked = state.broker.ask_node(conn_id, request, timeout)?;
        self.wait(asked)
    }
}

/// Another node asks about one of this node's connections: done as for a
/// plugin of this node.
impl NodeRequestHandler for ServerServices {
    fn handle(&self, conn_id: u64, request: NodeRequest) -> NodeAnswer {
        let here = self.with_server(false, |s| s.hub.get(conn_id).is_some());
        if !here {
            return NodeAnswer::Gone;
        }
        match request {
            NodeRequest::ConnInfo => {
                NodeAnswer::Text(self.query(host_query::CONN_INFO, conn_id, ""))
            }
            NodeRequest::ConnData { key } => {
                NodeAnswer::Text(self.query(host_query::CONN_DATA, conn_id, &key))
            }
            NodeRequest::SetData { key, value } => {
                NodeAnswer::Done(self.set_conn_data(conn_id, &key, value.as_deref()))
            }
            NodeRequest::Membership { room, join } => {
                NodeAnswer::Done(self.set_membership(conn_id, &room, join))
            }
            NodeRequest::Close { code, reason } => NodeAnswer::Done(self.with_server(false, |s| {
                s.hub
                    .close(conn_id, &crate::rooms::hub::CloseRequest { code, reason })
            })),
            NodeRequest::CallClient {
                method,
                params,
                timeout_ms,
            } => {
                match self.call_client(conn_id, &method, &params, Duration::from_millis(timeout_ms))
                {
                    ClientCall::Answered(answer) => NodeAnswer::Answered(answer),
                    ClientCall::TimedOut => NodeAnswer::TimedOut,
                    ClientCall::Gone => NodeAnswer::Gone,
                }
            }
        }
    }

    fn obey(&self, order: crate::cluster::Order) {
        self.with_server((), |s| crate::api::orders::obey(s, order));
    }
}

/// Drives `future` to its answer from a thread that may block: at once if
/// it is ready (always, for the in-memory broker); otherwise on `runtime`,
/// from a plain thread (a plugin's), or from a worker of a multi-thread
/// runtime (an inline action), which hands its other tasks to the other
/// workers meanwhile. `None` when it cannot wait here: no runtime, or a
/// worker of a single-thread runtime (waiting would stall it for good).
pub(crate) fn wait_on<T>(runtime: Option<&Handle>, mut future: BoxFuture<'_, T>) -> Option<T> {
    {
        // The first poll may start timers or I/O: inside the runtime's
        // context, even on a plugin's own thread.
        let _context = runtime.map(Handle::enter);
        if let Some(answer) = (&mut future).now_or_never() {
            return Some(answer);
        }
    }
    let runtime = runtime?;
    match Handle::try_current() {
        Err(_) => Some(runtime.block_on(future)),
        Ok(here) if here.runtime_flavor() == RuntimeFlavor::MultiThread => {
            Some(tokio::task::block_in_place(|| runtime.block_on(future)))
        }
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(value: u32) -> BoxFuture<'static, u32> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            value
        })
    }

    #[test]
    fn a_ready_answer_needs_no_runtime() {
        assert_eq!(wait_on(None, Box::pin(std::future::ready(7))), Some(7));
        assert_eq!(wait_on(None, Box::pin(std::future::pending::<u32>())), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_thread_and_a_worker_wait_on_the_runtime() {
        let runtime = Handle::current();
        let on_thread = {
            let runtime = runtime.clone();
            tokio::task::spawn_blocking(move || wait_on(Some(&runtime), later(2)))
        };
        assert_eq!(on_thread.await.ok().flatten(), Some(2));
        // Here: a worker of a multi-thread runtime (an inline action).
        assert_eq!(wait_on(Some(&runtime), later(3)), Some(3));
    }

    /// A cluster broker's future starts a timer on its first poll, which
    /// needs the runtime's context even on a plugin's own thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_thread_polls_a_timer_inside_the_runtime() {
        let runtime = Handle::current();
        let answer = std::thread::spawn(move || {
            let timed: BoxFuture<'static, Option<u32>> = Box::pin(async {
                tokio::time::timeout(Duration::from_secs(1), std::future::ready(5))
                    .await
                    .ok()
            });
            wait_on(Some(&runtime), timed)
        })
        .join()
        .ok()
        .flatten();
        assert_eq!(answer, Some(Some(5)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_single_thread_worker_does_not_stall_itself() {
        assert_eq!(wait_on(Some(&Handle::current()), later(4)), None);
    }
}
