//! The stable C ABI between the Switchboard host and a plugin.
//!
//! Only `#[repr(C)]` types and `extern "C"` functions live here: Rust has no
//! stable ABI, so nothing from std or serde may cross the boundary. Every
//! struct that may grow starts with (or carries) its own size, and new fields
//! are only ever appended, so a plugin built against an older `action-api`
//! keeps loading in a newer host and vice versa. Hosts and plugins read only
//! the prefix both of them know.
//!
//! The protocol of one plugin, in order:
//! 1. The host opens the library and resolves [`ENTRY_SYMBOL`], an
//!    [`EntryFn`].
//! 2. It calls the entry with its [`HostTable`] (callbacks into the host).
//! 3. The entry returns a [`PluginDescriptor`]: name, version, the actions,
//!    and the plugin's `call` function. The host copies everything it needs
//!    out of the descriptor into its own memory.
//! 4. For each call the host passes a [`CallInfo`]; the plugin answers,
//!    now or later and from any thread, through [`HostTable::complete`].

mod host_table;

pub use host_table::{HOST_TABLE_MIN_SIZE, HOST_TABLE_REVISIONS, HostTable, host_query};
use std::ffi::c_void;

/// The ABI version this crate speaks. It changes only when a change cannot
/// be expressed by appending fields; the entry symbol's name carries it too.
pub const ABI_VERSION: u32 = 1;

/// Name of the one symbol a plugin exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"switchboard_plugin_v1\0";

/// The prefix shared by the entry symbols of every ABI version:
/// `switchboard_plugin_v{N}`. Hosts use it to name the version of a plugin
/// they cannot load.
pub const ENTRY_SYMBOL_PREFIX: &str = "switchboard_plugin_v";

/// Signature of the entry symbol.
///
/// The host passes its callback table, which stays valid for as long as the
/// library is loaded. The plugin returns its descriptor, or null when it
/// could not initialise (the reason goes through the host's log callback).
pub type EntryFn = unsafe extern "C" fn(host: *const HostTable) -> *const PluginDescriptor;

/// A borrowed run of bytes: `len` bytes at `ptr`, owned by whoever made it
/// and valid for the duration stated where it is used. A null `ptr` with a
/// zero `len` means "absent".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ByteView {
    /// First byte, or null when absent.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl ByteView {
    /// The absent view (null pointer, zero length).
    pub const ABSENT: ByteView = ByteView {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// A view of `bytes`; valid for as long as `bytes` is.
    pub fn of(bytes: &[u8]) -> ByteView {
        ByteView {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// Whether this view is the absent one.
    pub fn is_absent(&self) -> bool {
        self.ptr.is_null()
    }

    /// Reads the bytes back.
    ///
    /// # Safety
    /// `ptr` must be null, or point to `len` readable bytes that stay valid
    /// and unchanged for the returned lifetime.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller promises `ptr` points to `len` live bytes.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// Severity of a log line sent through [`HostTable::log`].
pub mod log_level {
    /// Errors a person should look at.
    pub const ERROR: u32 = 1;
    /// Something unexpected that the plugin handled.
    pub const WARN: u32 = 2;
    /// Normal operation.
    pub const INFO: u32 = 3;
    /// Detail for debugging.
    pub const DEBUG: u32 = 4;
    /// Very fine detail.
    pub const TRACE: u32 = 5;
}

/// How a call ended, passed to [`HostTable::complete`].
pub mod status {
    /// Success: the body is the JSON result.
    pub const OK: u32 = 0;
    /// The action refused: the body is a JSON-RPC error object
    /// (`{"code":..,"message":..,"data":..}`).
    pub const ACTION_ERROR: u32 = 1;
    /// The action panicked: the body is the panic message as UTF-8 text.
    pub const PANICKED: u32 = 2;
}

/// Kinds of [`ConnectionEvent`], and the bits of
/// [`PluginDescriptor::event_mask`] that ask for them (`1 << kind`).
pub mod event_kind {
    /// A WebSocket connection opened (after the handshake was admitted).
    pub const CONNECT: u32 = 1;
    /// A connection signed in (on the handshake or by `rpc.auth`).
    pub const AUTH_SUCCESS: u32 = 2;
    /// A token or credential was refused.
    pub const AUTH_FAILURE: u32 = 3;
    /// A connection closed; `detail` says why.
    pub const DISCONNECT: u32 = 4;
    /// Something failed on a connection (an action panicked or timed out,
    /// a write stalled); `detail` says what.
    pub const ERROR: u32 = 5;
}

/// Bits of [`ActionDescriptor::flags`].
pub mod action_flags {
    /// The action may be called by connections that have not signed in.
    pub const PUBLIC: u32 = 1;
    /// The action never blocks and finishes in microseconds: the host may
    /// run it on the connection's own thread (no hand-off, no deadline).
    pub const INLINE: u32 = 2;
}

/// One action a plugin offers.
///
/// The array of these that [`PluginDescriptor::actions`] points to is
/// strided by [`PluginDescriptor::action_size`], so fields may be appended.
#[repr(C)]
#[derive(Debug)]
pub struct ActionDescriptor {
    /// The method path clients call, UTF-8 (for example `kv/get`).
    pub path: ByteView,
    /// [`action_flags`] bits.
    pub flags: u32,
    /// Deadline for one call in milliseconds; 0 means the host's default.
    pub timeout_ms: u64,
    /// Appended in revision 2: scopes the caller's token must all carry,
    /// space-separated (absent or empty: none).
    pub scopes: ByteView,
    /// Appended in revision 3: calls one connection may make to this action
    /// per second, on average (0: no limit of its own).
    pub rate_per_sec: u32,
    /// Appended in revision 3: calls one connection may make at once above
    /// that rate (0: the rate itself).
    pub rate_burst: u32,
}

/// What a plugin tells the host about itself.
///
/// All pointers stay valid until the library is unloaded; the host copies
/// what it keeps. Fields are only ever appended; the host reads only the
/// first `size` bytes and treats the rest as absent.
#[repr(C)]
#[derive(Debug)]
pub struct PluginDescriptor {
    /// The ABI version the plugin was built for.
    pub abi_version: u32,
    /// `size_of::<PluginDescriptor>()` in the plugin that built it.
    pub size: u32,
    /// Plugin name, UTF-8.
    pub name: ByteView,
    /// Plugin version, UTF-8 (usually the crate version).
    pub version: ByteView,
    /// First element of the action array.
    pub actions: *const ActionDescriptor,
    /// Number of actions.
    pub action_count: usize,
    /// `size_of::<ActionDescriptor>()` in the plugin: the array's stride.
    pub action_size: usize,
    /// Runs action number `action` (an index into `actions`). The plugin
    /// must eventually call [`HostTable::complete`] with `call.reply`
    /// exactly once. `call` and everything it points to are valid only
    /// until this function returns. Never panics.
    pub call: unsafe extern "C" fn(action: usize, call: *const CallInfo),
    /// Appended in ABI 1 revision 1: called once when the host stops using
    /// the plugin (server shutdown, or the plugin's retirement), so it can
    /// stop threads and free resources. May be absent. Never panics.
    pub shutdown: Option<unsafe extern "C" fn()>,
    /// Appended in revision 2: the authentication hook, or absent. The
    /// host calls it from a thread that may block; the plugin answers
    /// through [`HostTable::complete`] with `request.reply`: `OK` with a
    /// JSON body `{"user": "...", "scopes": [..]?, "rooms": [..]?,
    /// "data": any?, "expires_at": secs?}`, or `ACTION_ERROR` with a
    /// JSON-RPC error object whose message is the refusal's reason.
    /// Never panics.
    pub authenticate: Option<unsafe extern "C" fn(request: *const AuthRequest)>,
    /// Appended in revision 2: receives the lifecycle events selected by
    /// `event_mask`, on a host thread dedicated to the plugin, in order.
    /// Never panics.
    pub on_event: Option<unsafe extern "C" fn(event: *const ConnectionEvent)>,
    /// Appended in revision 2: `1 << kind` for each [`event_kind`] wanted.
    pub event_mask: u32,
    /// Appended in revision 2: the room-join hook, or absent. The host
    /// calls it (from a thread that may block) when a client asks to join
    /// a room matching one of `room_patterns`; the plugin answers through
    /// [`HostTable::complete`] with `request.reply`: `OK` to approve, or
    /// `ACTION_ERROR` with an error object whose message is the reason.
    /// Never panics.
    pub room_join: Option<unsafe extern "C" fn(request: *const JoinRequest)>,
    /// Appended in revision 2: the room patterns `room_join` decides,
    /// space-separated (`*` any run of characters, `{sub}` the user).
    pub room_patterns: ByteView,
    /// Appended in revision 3: hands the plugin's state to its successor
    /// on a hot reload. The plugin calls `sink(sink_ctx, bytes)` at most
    /// once (the host copies the bytes before `sink` returns) and returns
    /// [`state_status::OK`], or [`state_status::FAILED`] (after writing a
    /// reason through `sink`). May be absent. Never panics.
    pub save_state: Option<unsafe extern "C" fn(sink_ctx: *mut c_void, sink: StateSink) -> u32>,
    /// Appended in revision 3: takes the state a predecessor saved, before
    /// the new generation serves any call. Returns [`state_status::OK`],
    /// or [`state_status::FAILED`] after writing a reason through `sink`:
    /// the host then refuses the new generation and keeps the old one.
    /// `state` is valid only until it returns. May be absent. Never panics.
    pub restore_state: Option<
        unsafe extern "C" fn(state: ByteView, sink_ctx: *mut c_void, sink: StateSink) -> u32,
    >,
}

/// Where a plugin writes bytes for the host (saved state, or the reason a
/// save or restore failed): the host copies them before it returns.
pub type StateSink = unsafe extern "C" fn(sink_ctx: *mut c_void, bytes: ByteView);

/// What [`PluginDescriptor::save_state`] and
/// [`PluginDescriptor::restore_state`] return.
pub mod state_status {
    /// Done.
    pub const OK: u32 = 0;
    /// Failed; the bytes written through the sink are the reason.
    pub const FAILED: u32 = 1;
}

// SAFETY: the descriptor is immutable once returned; its pointers refer to
// data that lives as long as the library.
unsafe impl Send for PluginDescriptor {}
// SAFETY: see `Send`.
unsafe impl Sync for PluginDescriptor {}

/// The size of the first revision of [`PluginDescriptor`] (everything up
/// to and including `call`). A host accepts any `size` from this up.
pub const PLUGIN_DESCRIPTOR_MIN_SIZE: usize = std::mem::offset_of!(PluginDescriptor, shutdown);

/// The sizes of [`PluginDescriptor`]'s revisions, oldest first: 1 ends at
/// `call`, 1.1 adds `shutdown`, 2 adds the authentication and lifecycle
/// hooks, 3 the state handoff.
pub const PLUGIN_DESCRIPTOR_REVISIONS: [usize; 4] = [
    PLUGIN_DESCRIPTOR_MIN_SIZE,
    std::mem::offset_of!(PluginDescriptor, authenticate),
    std::mem::offset_of!(PluginDescriptor, save_state),
    std::mem::size_of::<PluginDescriptor>(),
];

/// The size of the first revision of [`ActionDescriptor`] (up to
/// `timeout_ms`).
pub const ACTION_DESCRIPTOR_MIN_SIZE: usize = std::mem::offset_of!(ActionDescriptor, scopes);

/// One call, as the host hands it to [`PluginDescriptor::call`].
///
/// Valid only until `call` returns; a plugin that answers later copies
/// what it needs first. Fields are only ever appended; a plugin reads
/// fields past the ones it knows only after checking `size`.
///
/// Every text field (`params`, `user`, `scopes`, `conn_data`) is UTF-8: a
/// host must never pass anything else, and a plugin may rely on it without
/// checking again (the host checked the client's frame once, on arrival).
#[repr(C)]
#[derive(Debug)]
pub struct CallInfo {
    /// `size_of::<CallInfo>()` in the host.
    pub size: u32,
    /// The `params` member of the request as raw JSON text; `null` when the
    /// request had none.
    pub params: ByteView,
    /// The calling connection's id (never 0).
    pub conn_id: u64,
    /// The signed-in user (the token's `sub`), or absent when anonymous.
    pub user: ByteView,
    /// The handle to pass to [`HostTable::complete`].
    pub reply: *mut c_void,
    /// Appended in revision 2: the scopes of the caller's token,
    /// space-separated (absent when anonymous).
    pub scopes: ByteView,
    /// Appended in revision 2: the connection data an auth plugin attached
    /// when the connection signed in, as JSON (absent when none).
    pub conn_data: ByteView,
}

/// What an `authenticate` hook is asked to judge. Valid only until the
/// hook returns. Fields are only ever appended.
#[repr(C)]
#[derive(Debug)]
pub struct AuthRequest {
    /// `size_of::<AuthRequest>()` in the host.
    pub size: u32,
    /// The token presented (header, query or `rpc.auth`), or absent.
    pub token: ByteView,
    /// The upgrade request's headers as a JSON object of lower-case name
    /// to value (repeated headers joined with ", "); `Authorization` and
    /// `Cookie` included.
    pub headers: ByteView,
    /// The upgrade request's raw query string, or absent.
    pub query: ByteView,
    /// The peer's address, e.g. `127.0.0.1:50412`.
    pub remote_addr: ByteView,
    /// The connection being authenticated.
    pub conn_id: u64,
    /// The handle to pass to [`HostTable::complete`].
    pub reply: *mut c_void,
}

/// A client's request to join a room, for a plugin's `room_join` hook.
/// Valid only until the hook returns. Fields are only ever appended.
#[repr(C)]
#[derive(Debug)]
pub struct JoinRequest {
    /// `size_of::<JoinRequest>()` in the host.
    pub size: u32,
    /// The room.
    pub room: ByteView,
    /// Which of the plugin's `room_patterns` matched.
    pub pattern: ByteView,
    /// The connection asking.
    pub conn_id: u64,
    /// Its user, or absent when anonymous.
    pub user: ByteView,
    /// The handle to pass to [`HostTable::complete`].
    pub reply: *mut c_void,
}

/// One lifecycle event. Valid only until `on_event` returns. Fields are
/// only ever appended.
#[repr(C)]
#[derive(Debug)]
pub struct ConnectionEvent {
    /// `size_of::<ConnectionEvent>()` in the host.
    pub size: u32,
    /// An [`event_kind`].
    pub kind: u32,
    /// The connection.
    pub conn_id: u64,
    /// The signed-in user, or absent.
    pub user: ByteView,
    /// A JSON object with the event's details (e.g. `{"reason": ...}`,
    /// `{"remote_addr": ...}`, `{"error": ...}`).
    pub detail: ByteView,
}
