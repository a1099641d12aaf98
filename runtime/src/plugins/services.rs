//! The server's services to plugins: the callbacks of the host table's
//! second revision (push to connections, users and everyone; publish;
//! server-side joins; connection info and data; calls to clients).
//!
//! Plugins call these from their own threads. They reach the running
//! server through [`install`], a process-wide handle set when `serve`
//! starts (plugins loaded by `switchboard check` have no server: every
//! service reports failure). Each callback catches panics.

use crate::hub::{CallOutcome, Outgoing};
use crate::rooms::event_frame;
use crate::rooms::policy::check_name;
use crate::state::ServerState;
use action_api::abi::{ByteView, host_query};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

static SERVER: OnceLock<Weak<ServerState>> = OnceLock::new();

/// Makes `state` the server plugins' services act on (once per process).
pub fn install(state: &Arc<ServerState>) {
    let _ = SERVER.set(Arc::downgrade(state));
}

/// Runs `f` with the server, catching panics; `fallback` when there is no
/// server or `f` panicked.
fn with_server<T>(fallback: T, f: impl FnOnce(&ServerState) -> T) -> T {
    let Some(state) = SERVER.get().and_then(Weak::upgrade) else {
        return fallback;
    };
    catch_unwind(AssertUnwindSafe(|| f(&state))).unwrap_or(fallback)
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

fn event(event: &str, data: &str) -> Outgoing {
    let data: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    event_frame(event, &data)
}

pub(crate) unsafe extern "C" fn send_to_conn(
    _ctx: *const c_void,
    conn_id: u64,
    name: ByteView,
    data: ByteView,
) -> u32 {
    // SAFETY: the plugin's views live for this call.
    let (name, data) = unsafe { (text(name), valid_json(text(data))) };
    let (Some(name), Some(data)) = (name, data) else {
        return 0;
    };
    with_server(0, |s| {
        u32::from(s.hub.send_to_conn(conn_id, event(name, data)))
    })
}

pub(crate) unsafe extern "C" fn send_to_user(
    _ctx: *const c_void,
    user: ByteView,
    name: ByteView,
    data: ByteView,
) -> u64 {
    // SAFETY: as above.
    let (user, name, data) = unsafe { (text(user), text(name), valid_json(text(data))) };
    let (Some(user), Some(name), Some(data)) = (user, name, data) else {
        return 0;
    };
    with_server(0, |s| s.hub.send_to_user(user, &event(name, data)) as u64)
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
/// The views and `except` (`except_len` ids, or null) live for the call.
unsafe fn broadcast_to(
    _ctx: *const c_void,
    name: ByteView,
    data: ByteView,
    except: *const u64,
    except_len: usize,
    signed_in_only: bool,
) -> u64 {
    // SAFETY: as above; `except` points to `except_len` ids for this call.
    let (name, data, except) = unsafe {
        let except = if except.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(except, except_len)
        };
        (text(name), valid_json(text(data)), except)
    };
    let (Some(name), Some(data)) = (name, data) else {
        return 0;
    };
    with_server(0, |s| {
        s.hub.broadcast(&event(name, data), except, signed_in_only) as u64
    })
}

pub(crate) unsafe extern "C" fn publish(
    _ctx: *const c_void,
    room: ByteView,
    data: ByteView,
) -> u64 {
    // SAFETY: as above.
    let (room, data) = unsafe { (text(room), valid_json(text(data))) };
    let (Some(room), Some(data)) = (room, data) else {
        return 0;
    };
    if check_name(room).is_err() {
        return 0;
    }
    with_server(0, |s| {
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

pub(crate) unsafe extern "C" fn set_membership(
    _ctx: *const c_void,
    conn_id: u64,
    room: ByteView,
    join: u32,
) -> u32 {
    // SAFETY: as above.
    let Some(room) = (unsafe { text(room) }) else {
        return 0;
    };
    if check_name(room).is_err() {
        return 0;
    }
    with_server(0, |s| {
        if join == 0 {
            return u32::from(s.rooms.leave(&s.hub, room, conn_id));
        }
        let Some(handle) = s.hub.get(conn_id) else {
            return 0;
        };
        let rule = Arc::clone(s.rooms.rule(room));
        match s.rooms.join(&s.hub, room, &rule, &handle, None) {
            Ok(_) => 1,
            Err(e) => {
                tracing::info!(
                    conn = conn_id,
                    room,
                    "a plugin's join was refused: {}",
                    e.message
                );
                0
            }
        }
    })
}

pub(crate) unsafe extern "C" fn query(
    _ctx: *const c_void,
    what: u32,
    conn_id: u64,
    key: ByteView,
    sink: unsafe extern "C" fn(*mut c_void, ByteView),
    sink_ctx: *mut c_void,
) -> u32 {
    // SAFETY: as above.
    let key = unsafe { text(key) }.unwrap_or("");
    let answer = with_server(None, |s| {
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
            host_query::CONN_DATA => handle.data.lock().ok()?.get(key).cloned(),
            _ => None,
        }
    });
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
    _ctx: *const c_void,
    conn_id: u64,
    key: ByteView,
    value: ByteView,
) -> u32 {
    // SAFETY: as above.
    let (key, absent, value) = unsafe { (text(key), value.is_absent(), valid_json(text(value))) };
    let Some(key) = key else { return 0 };
    with_server(0, |s| {
        let Some(handle) = s.hub.get(conn_id) else {
            return 0;
        };
        let Ok(mut data) = handle.data.lock() else {
            return 0;
        };
        match (absent, value) {
            (true, _) => {
                data.remove(key);
            }
            (false, Some(value)) => {
                data.insert(key.to_owned(), value.to_owned());
            }
            (false, None) => return 0,
        }
        1
    })
}

pub(crate) unsafe extern "C" fn call_client(
    _ctx: *const c_void,
    conn_id: u64,
    method: ByteView,
    params: ByteView,
    timeout_ms: u64,
    sink: unsafe extern "C" fn(*mut c_void, ByteView),
    sink_ctx: *mut c_void,
) -> u32 {
    // SAFETY: as above.
    let (method, params) = unsafe { (text(method), valid_json(text(params))) };
    let (Some(method), Some(params)) = (method, params) else {
        return 3;
    };
    let outcome = with_server(CallOutcome::Gone, |s| {
        s.hub
            .call_client(conn_id, method, params, Duration::from_millis(timeout_ms))
    });
    let (status, body) = match outcome {
        CallOutcome::Answered(Ok(result)) => (0, result),
        CallOutcome::Answered(Err(error)) => (1, error),
        CallOutcome::TimedOut => return 2,
        CallOutcome::Gone => return 3,
    };
    // SAFETY: as in `query`.
    unsafe { sink(sink_ctx, ByteView::of(body.as_bytes())) };
    status
}
