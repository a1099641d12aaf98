//! The `extern "C"` shims behind the host table's service callbacks: each
//! decodes a plugin's arguments, checks that what it sends is text and
//! valid JSON, and calls the [`HostServices`] of the plugin's own server,
//! found through the `host_ctx` of its table (its [`PluginLogContext`]):
//! there is no process-wide global, and two servers in one process each
//! serve their own plugins. Each shim catches panics.

use super::context::PluginLogContext;
use super::services::{ClientCall, HostServices};
use action_api::abi::ByteView;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

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
