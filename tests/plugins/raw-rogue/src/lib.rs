//! A plugin on the raw ABI (no authoring API) that breaks the rules a
//! plugin made with `action-api` cannot break, so the host's defences can
//! be tested:
//! - `rogue/twice` completes its call twice;
//! - `rogue/garbage` answers with bytes that are not JSON;
//! - `rogue/linger` answers from a thread of its own (made with
//!   `pthread_create`, so no std thread-local pins the library), then
//!   stays in its own code for a second before the thread ends: if the
//!   host let the library be unloaded when the answer came, that thread
//!   would return into unmapped code.

use action_api::abi::{ABI_VERSION, ByteView, CallInfo, HostTable, action_flags, status};
use std::ffi::c_void;
use std::sync::OnceLock;

/// The first-revision action entry.
#[repr(C)]
struct Action {
    path: ByteView,
    flags: u32,
    timeout_ms: u64,
}

/// The first-revision descriptor layout.
#[repr(C)]
struct Descriptor {
    abi_version: u32,
    size: u32,
    name: ByteView,
    version: ByteView,
    actions: *const Action,
    action_count: usize,
    action_size: usize,
    call: unsafe extern "C" fn(action: usize, call: *const CallInfo),
}

struct Exported {
    host: &'static HostTable,
    descriptor: Descriptor,
    _actions: Box<[Action; 3]>,
}

// SAFETY: immutable after construction; pointers refer to statics and to
// the boxed array kept alongside.
unsafe impl Send for Exported {}
// SAFETY: see `Send`.
unsafe impl Sync for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

/// What the lingering thread needs: the host's `complete` and the handle.
struct Linger {
    complete: unsafe extern "C" fn(reply: *mut c_void, status: u32, body: ByteView),
    reply: *mut c_void,
}

extern "C" fn linger(arg: *mut c_void) -> *mut c_void {
    // SAFETY: `arg` is the `Linger` boxed by `call`, handed to this thread
    // alone.
    let job = unsafe { Box::from_raw(arg.cast::<Linger>()) };
    // SAFETY: plain libc sleeps; the host's `complete` takes the handle
    // once, with bytes that live for the call.
    unsafe {
        libc::usleep(50_000);
        (job.complete)(job.reply, status::OK, ByteView::of(b"\"lingered\""));
        // Still in this library's code, a second after answering.
        libc::usleep(1_000_000);
    }
    std::ptr::null_mut()
}

unsafe extern "C" fn call(action: usize, call: *const CallInfo) {
    let Some(exported) = EXPORTED.get() else {
        return;
    };
    let complete = exported.host.complete;
    // SAFETY: the host passes a valid CallInfo for the duration of the call.
    let reply = unsafe { (*call).reply };
    match action {
        // SAFETY (all three): the host's `complete` with the call's handle
        // and bytes that live for the call; completing twice is the point.
        0 => unsafe {
            complete(reply, status::OK, ByteView::of(b"1"));
            complete(reply, status::OK, ByteView::of(b"2"));
        },
        1 => unsafe { complete(reply, status::OK, ByteView::of(b"{\"unclosed\": ")) },
        _ => {
            let job = Box::into_raw(Box::new(Linger { complete, reply })).cast::<c_void>();
            let mut thread: libc::pthread_t = 0;
            // SAFETY: a detached thread running `linger`, which owns `job`.
            let started = unsafe {
                libc::pthread_create(&mut thread, std::ptr::null(), linger, job) == 0
                    && libc::pthread_detach(thread) == 0
            };
            if !started {
                // SAFETY: as above.
                unsafe {
                    complete(
                        reply,
                        status::ACTION_ERROR,
                        ByteView::of(b"{\"code\":1,\"message\":\"no thread\"}"),
                    )
                };
            }
        }
    }
}

/// The ABI 1 entry symbol, first revision.
///
/// # Safety
/// Called by the host with a table that outlives the library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn switchboard_plugin_v1(host: *const HostTable) -> *const c_void {
    // SAFETY: the host's table lives as long as the library.
    let Some(host) = (unsafe { host.as_ref() }) else {
        return std::ptr::null();
    };
    let action = |path: &'static [u8]| Action {
        path: ByteView::of(path),
        flags: action_flags::PUBLIC,
        timeout_ms: 0,
    };
    let exported = EXPORTED.get_or_init(|| {
        let actions = Box::new([
            action(b"rogue/twice"),
            action(b"rogue/garbage"),
            action(b"rogue/linger"),
        ]);
        Exported {
            host,
            descriptor: Descriptor {
                abi_version: ABI_VERSION,
                size: std::mem::size_of::<Descriptor>() as u32,
                name: ByteView::of(b"raw-rogue"),
                version: ByteView::of(b"0.0.1"),
                actions: actions.as_ptr(),
                action_count: 3,
                action_size: std::mem::size_of::<Action>(),
                call,
            },
            _actions: actions,
        }
    });
    (&exported.descriptor as *const Descriptor).cast()
}
