//! The services the host offers plugins (the callbacks of the host table's
//! second revision: push to connections, users and everyone; publish;
//! server-side joins; connection info and data; calls to clients), as the
//! [`HostServices`] a server provides. The server implements it outside
//! this module tree (`crate::host_services`), so plugin loading knows
//! nothing of connections or rooms; the `extern "C"` shims that plugins
//! call are in `shims`.

use std::time::Duration;

/// How a call to a client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCall {
    /// It answered: `Ok(result)` or `Err(error object)`, as JSON text.
    Answered(Result<String, String>),
    /// No answer in time.
    TimedOut,
    /// No such connection, or it could not take the call.
    Gone,
}

/// What a server does for its plugins. Every argument has been checked:
/// names and keys are text, and `data`, `params` and values are valid JSON.
pub trait HostServices: Send + Sync + std::fmt::Debug {
    /// Pushes an event to one connection; whether it was queued.
    fn send_to_conn(&self, conn_id: u64, event: &str, data: &str) -> bool;
    /// Pushes an event to every connection of `user`; how many got it.
    fn send_to_user(&self, user: &str, event: &str, data: &str) -> u64;
    /// Pushes an event to every connection (or every signed-in one) but
    /// those in `except`; how many got it.
    fn broadcast(&self, event: &str, data: &str, except: &[u64], signed_in_only: bool) -> u64;
    /// Publishes to a room; the message's offset, or 0 if refused.
    fn publish(&self, room: &str, data: &str) -> u64;
    /// Joins (or leaves) a connection to (or from) a room; whether it did.
    fn set_membership(&self, conn_id: u64, room: &str, join: bool) -> bool;
    /// Reads a [`action_api::abi::host_query`] item, as JSON.
    fn query(&self, what: u32, conn_id: u64, key: &str) -> Option<String>;
    /// Stores (or with `None` deletes) a connection's value under `key`;
    /// whether the connection exists.
    fn set_conn_data(&self, conn_id: u64, key: &str, value: Option<&str>) -> bool;
    /// Calls `method` on a client and blocks the calling thread (a
    /// plugin's) until it answers or `timeout` passes.
    fn call_client(
        &self,
        conn_id: u64,
        method: &str,
        params: &str,
        timeout: Duration,
    ) -> ClientCall;
}

/// The services of no server (`switchboard check`, the preflight child):
/// every one fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoServer;

impl HostServices for NoServer {
    fn send_to_conn(&self, _: u64, _: &str, _: &str) -> bool {
        false
    }
    fn send_to_user(&self, _: &str, _: &str, _: &str) -> u64 {
        0
    }
    fn broadcast(&self, _: &str, _: &str, _: &[u64], _: bool) -> u64 {
        0
    }
    fn publish(&self, _: &str, _: &str) -> u64 {
        0
    }
    fn set_membership(&self, _: u64, _: &str, _: bool) -> bool {
        false
    }
    fn query(&self, _: u32, _: u64, _: &str) -> Option<String> {
        None
    }
    fn set_conn_data(&self, _: u64, _: &str, _: Option<&str>) -> bool {
        false
    }
    fn call_client(&self, _: u64, _: &str, _: &str, _: Duration) -> ClientCall {
        ClientCall::Gone
    }
}
