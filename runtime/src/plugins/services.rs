//! The services the host offers plugins (the callbacks of the host table's
//! second revision: push to connections, users and everyone; publish;
//! server-side joins; connection info and data; calls to clients).
//!
//! [`HostServices`] is what a server provides; the server implements it
//! outside this module tree (`crate::host_services`), so plugin loading
//! knows nothing of connections or rooms. The `extern "C"` shims here
//! decode a plugin's arguments, check that what it sends is text and
//! valid JSON, and call the services of the plugin's own server, found
//! through the `host_ctx` of its table: there is no process-wide global,
//! and two servers in one process each serve their own plugins. Each shim
//! catches panics.

use super::host::PluginLogContext;
use action_api::abi::ByteView;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
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

/// Runs `f` with the services of the plugin whose table carries `ctx`,
/// catching panics; `fallback` when there are none or `f` panicked.
///
/// # Safety
/// `ctx` is null or the `host_ctx` of a table built by
/// [`super::host::host_table`] (a `'static` [`PluginLogContext`]).
unsafe fn with_services<T>(
    ctx: *const c_void,
    fallback: T,
    f: impl FnOnce(&dyn HostServices) -> T,
) -> T {
    // SAFETY: per this function's contract.
    let Some(context) = (unsafe { ctx.cast::<PluginLogContext>().as_ref() }) else {
        return fallback;
    };
    catch_unwind(AssertUnwindSafe(|| f(&*context.services))).unwrap_or(fallback)
}

/// # Safety
/// `view` is absent or points to `len` bytes alive for the current call.
unsafe fn text<'a>(view: ByteView) -> Option<&'a str> {
    // SAFETY: per this function's contract.
    std::str::from_utf8(unsafe { view.as_slice() }).ok()
}

/// Valid JSON text, or `None`: what plugins send is checked before it is
/// spliced into frames other clients receive.
fn valid_json(data: Option<&str>) -> Option<&str> {
    data.filter(|d| serde_json::from_str::<serde::de::IgnoredAny>(d).is_ok())
}

pub(crate) unsafe extern "C" fn send_to_conn(
    ctx: *const c_void,
    conn_id: u64,
    name: ByteView,
    data: ByteView,
) -> u32 {
    // SAFETY: the plugin's views live for this call; `ctx` is its table's.
    unsafe {
        let (Some(name), Some(data)) = (text(name), valid_json(text(data))) else {
            return 0;
        };
        with_services(ctx, 0, |s| u32::from(s.send_to_conn(conn_id, name, data)))
    }
}

pub(crate) unsafe extern "C" fn send_to_user(
    ctx: *const c_void,
    user: ByteView,
    name: ByteView,
    data: ByteView,
) -> u64 {
    // SAFETY: as above.
    unsafe {
        let (Some(user), Some(name), Some(data)) = (text(user), text(name), valid_json(text(data)))
        else {
            return 0;
        };
        with_services(ctx, 0, |s| s.send_to_user(user, name, data))
    }
}

pub(crate) unsafe extern "C" fn broadcast(
    ctx: *const c_void,
    name: ByteView,
    data: ByteView,
    except: *const u64,
    except_len: usize,
) -> u64 {
    // SAFETY: the caller's contract is this function's.
    unsafe { broadcast_to(ctx, name, data, except, except_len, false) }
}

pub(crate) unsafe extern "C" fn broadcast_signed_in(
    ctx: *const c_void,
    name: ByteView,
    data: ByteView,
    except: *const u64,
    except_len: usize,
) -> u64 {
    // SAFETY: the caller's contract is this function's.
    unsafe { broadcast_to(ctx, name, data, except, except_len, true) }
}

/// # Safety
/// The views and `except` (`except_len` ids, or null) live for the call;
/// `ctx` is the plugin's table's.
unsafe fn broadcast_to(
    ctx: *const c_void,
    name: ByteView,
    data: ByteView,
    except: *const u64,
    except_len: usize,
    signed_in_only: bool,
) -> u64 {
    // SAFETY: per this function's contract.
    unsafe {
        let except = if except.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(except, except_len)
        };
        let (Some(name), Some(data)) = (text(name), valid_json(text(data))) else {
            return 0;
        };
        with_services(ctx, 0, |s| s.broadcast(name, data, except, signed_in_only))
    }
}

pub(crate) unsafe extern "C" fn publish(ctx: *const c_void, room: ByteView, data: ByteView) -> u64 {
    // SAFETY: as above.
    unsafe {
        let (Some(room), Some(data)) = (text(room), valid_json(text(data))) else {
            return 0;
        };
        with_services(ctx, 0, |s| s.publish(room, data))
    }
}

pub(crate) unsafe extern "C" fn set_membership(
    ctx: *const c_void,
    conn_id: u64,
    room: ByteView,
    join: u32,
) -> u32 {
    // SAFETY: as above.
    unsafe {
        let Some(room) = text(room) else {
            return 0;
        };
        with_services(ctx, 0, |s| {
            u32::from(s.set_membership(conn_id, room, join != 0))
        })
    }
}

pub(crate) unsafe extern "C" fn query(
    ctx: *const c_void,
    what: u32,
    conn_id: u64,
    key: ByteView,
    sink: unsafe extern "C" fn(*mut c_void, ByteView),
    sink_ctx: *mut c_void,
) -> u32 {
    // SAFETY: as above.
    let answer = unsafe {
        let key = text(key).unwrap_or("");
        with_services(ctx, None, |s| s.query(what, conn_id, key))
    };
    match answer {
        Some(json) => {
            // SAFETY: the plugin's sink and context, called once, with bytes
            // that live for the call.
            unsafe { sink(sink_ctx, ByteView::of(json.as_bytes())) };
            1
        }
        None => 0,
    }
}

pub(crate) unsafe extern "C" fn set_conn_data(
    ctx: *const c_void,
    conn_id: u64,
    key: ByteView,
    value: ByteView,
) -> u32 {
    // SAFETY: as above.
    unsafe {
        let (Some(key), absent) = (text(key), value.is_absent()) else {
            return 0;
        };
        let value = match (absent, valid_json(text(value))) {
            (true, _) => None,
            (false, Some(value)) => Some(value),
            (false, None) => return 0,
        };
        with_services(ctx, 0, |s| u32::from(s.set_conn_data(conn_id, key, value)))
    }
}

pub(crate) unsafe extern "C" fn call_client(
    ctx: *const c_void,
    conn_id: u64,
    method: ByteView,
    params: ByteView,
    timeout_ms: u64,
    sink: unsafe extern "C" fn(*mut c_void, ByteView),
    sink_ctx: *mut c_void,
) -> u32 {
    // SAFETY: as above.
    let outcome = unsafe {
        let (Some(method), Some(params)) = (text(method), valid_json(text(params))) else {
            return 3;
        };
        with_services(ctx, ClientCall::Gone, |s| {
            s.call_client(conn_id, method, params, Duration::from_millis(timeout_ms))
        })
    };
    let (status, body) = match outcome {
        ClientCall::Answered(Ok(result)) => (0, result),
        ClientCall::Answered(Err(error)) => (1, error),
        ClientCall::TimedOut => return 2,
        ClientCall::Gone => return 3,
    };
    // SAFETY: as in `query`.
    unsafe { sink(sink_ctx, ByteView::of(body.as_bytes())) };
    status
}
