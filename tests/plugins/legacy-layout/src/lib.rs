//! A plugin built the way the first revision of ABI 1 laid out its
//! descriptor: it ends at `call`, without the `shutdown` field appended
//! later, and declares its own smaller size. Newer hosts must load it and
//! treat the missing fields as absent. It is written against the raw ABI
//! (no authoring API), as a plugin from an older `action-api` would be.

use action_api::abi::{ABI_VERSION, ByteView, CallInfo, HostTable, action_flags, status};
use std::sync::OnceLock;

/// The first-revision action entry: no `scopes` yet.
#[repr(C)]
struct FirstRevisionAction {
    path: ByteView,
    flags: u32,
    timeout_ms: u64,
}

/// The first-revision descriptor layout.
#[repr(C)]
struct FirstRevisionDescriptor {
    abi_version: u32,
    size: u32,
    name: ByteView,
    version: ByteView,
    actions: *const FirstRevisionAction,
    action_count: usize,
    action_size: usize,
    call: unsafe extern "C" fn(action: usize, call: *const CallInfo),
}

struct Exported {
    host: &'static HostTable,
    descriptor: FirstRevisionDescriptor,
    _actions: Box<[FirstRevisionAction; 1]>,
}

// SAFETY: immutable after construction; pointers refer to statics and to
// the boxed array kept alongside.
unsafe impl Send for Exported {}
// SAFETY: see `Send`.
unsafe impl Sync for Exported {}

static EXPORTED: OnceLock<Exported> = OnceLock::new();

const REPLY: &[u8] = b"\"hello from a first-revision plugin\"";

unsafe extern "C" fn call(_action: usize, call: *const CallInfo) {
    let Some(exported) = EXPORTED.get() else {
        return;
    };
    // SAFETY: the host passes a valid CallInfo for the duration of the call
    // and its `complete` accepts the reply handle once.
    unsafe { (exported.host.complete)((*call).reply, status::OK, ByteView::of(REPLY)) }
}

/// The ABI 1 entry symbol, first revision.
///
/// # Safety
/// Called by the host with a table that outlives the library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn switchboard_plugin_v1(host: *const HostTable) -> *const std::ffi::c_void {
    // SAFETY: the host's table lives as long as the library.
    let Some(host) = (unsafe { host.as_ref() }) else {
        return std::ptr::null();
    };
    let exported = EXPORTED.get_or_init(|| {
        let actions = Box::new([FirstRevisionAction {
            path: ByteView::of(b"legacy/hello"),
            flags: action_flags::PUBLIC,
            timeout_ms: 0,
        }]);
        Exported {
            host,
            descriptor: FirstRevisionDescriptor {
                abi_version: ABI_VERSION,
                size: std::mem::size_of::<FirstRevisionDescriptor>() as u32,
                name: ByteView::of(b"legacy-layout"),
                version: ByteView::of(b"0.0.1"),
                actions: actions.as_ptr(),
                action_count: 1,
                action_size: std::mem::size_of::<FirstRevisionAction>(),
                call,
            },
            _actions: actions,
        }
    });
    (&exported.descriptor as *const FirstRevisionDescriptor).cast()
}
