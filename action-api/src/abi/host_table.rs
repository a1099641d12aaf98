//! [`HostTable`]: the callbacks from a plugin into the host, and its
//! revisions.

use super::ByteView;
#[cfg(doc)]
use super::{ABI_VERSION, CallInfo};
use std::ffi::c_void;

/// Callbacks from the plugin into the host, handed to the entry function.
///
/// Fields are only ever appended; a plugin must check `size` before reading
/// a field that a newer ABI revision added.
#[repr(C)]
#[derive(Debug)]
pub struct HostTable {
    /// The ABI version of the host ([`ABI_VERSION`] when it was built).
    pub abi_version: u32,
    /// `size_of::<HostTable>()` in the host that built this table.
    pub size: u32,
    /// Opaque host state; passed back to every callback unchanged.
    pub host_ctx: *const c_void,
    /// Writes one log line into the host's `tracing` output. `conn_id` is
    /// the connection the line is about, or 0. Never panics.
    pub log: unsafe extern "C" fn(host_ctx: *const c_void, level: u32, conn_id: u64, msg: ByteView),
    /// Completes a call: `reply` is [`CallInfo::reply`], exactly once per
    /// call, from any thread, now or later. The host copies `body` before
    /// it returns. Never panics.
    pub complete: unsafe extern "C" fn(reply: *mut c_void, status: u32, body: ByteView),
    /// Appended in revision 2 (all of what follows; absent in older hosts):
    /// pushes `{"method": "rpc.event", "params": {"event", "data"}}` to one
    /// connection. `data` is JSON. Returns 1 if queued, 0 if the connection
    /// is gone or too slow.
    pub send_to_conn: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            conn_id: u64,
            event: ByteView,
            data: ByteView,
        ) -> u32,
    >,
    /// Pushes an event to every connection of a user; returns how many.
    pub send_to_user: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            user: ByteView,
            event: ByteView,
            data: ByteView,
        ) -> u64,
    >,
    /// Pushes an event to every connection except the `except_len` ids at
    /// `except`; returns how many.
    pub broadcast: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            event: ByteView,
            data: ByteView,
            except: *const u64,
            except_len: usize,
        ) -> u64,
    >,
    /// Publishes JSON `data` to a room (as `rpc.message`, kept in its
    /// history); returns the message's offset, or 0 when it was refused (a
    /// bad room name, or a new room past the server's `max_rooms`).
    pub publish: Option<
        unsafe extern "C" fn(host_ctx: *const c_void, room: ByteView, data: ByteView) -> u64,
    >,
    /// Joins (`join` = 1) or leaves (`join` = 0) a connection to or from a
    /// room, server-side, bypassing client policy. Returns 1 on success.
    pub set_membership: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            conn_id: u64,
            room: ByteView,
            join: u32,
        ) -> u32,
    >,
    /// Reads something the host knows and hands it, as JSON, to `sink`
    /// (called at most once, before this returns): `what` is
    /// [`host_query::CONN_INFO`] (key ignored) or [`host_query::CONN_DATA`]
    /// (the value stored under `key`). Returns 1 if `sink` was called.
    pub query: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            what: u32,
            conn_id: u64,
            key: ByteView,
            sink: unsafe extern "C" fn(sink_ctx: *mut c_void, bytes: ByteView),
            sink_ctx: *mut c_void,
        ) -> u32,
    >,
    /// Stores JSON `value` under `key` for a connection until it closes
    /// (absent `value` deletes). Returns 1 if the connection exists.
    pub set_conn_data: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            conn_id: u64,
            key: ByteView,
            value: ByteView,
        ) -> u32,
    >,
    /// Calls `method` on a client and waits (blocking the calling thread)
    /// up to `timeout_ms` for its answer, which goes to `sink` as the JSON
    /// of the client's `result` (status 0) or `error` object (status 1).
    /// Returns 0 answered, 1 the client answered with an error, 2 timed
    /// out, 3 no such connection.
    pub call_client: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            conn_id: u64,
            method: ByteView,
            params: ByteView,
            timeout_ms: u64,
            sink: unsafe extern "C" fn(sink_ctx: *mut c_void, bytes: ByteView),
            sink_ctx: *mut c_void,
        ) -> u32,
    >,
    /// Appended in revision 4 (absent in older hosts): like `broadcast`,
    /// but reaching only connections that are signed in.
    pub broadcast_signed_in: Option<
        unsafe extern "C" fn(
            host_ctx: *const c_void,
            event: ByteView,
            data: ByteView,
            except: *const u64,
            except_len: usize,
        ) -> u64,
    >,
    /// Appended in revision 5 (absent in older hosts): like `complete`
    /// with [`status::OK`](super::status::OK), for a result this crate's
    /// serializer (serde_json) wrote. A plugin that calls it promises the
    /// body is well-formed JSON, and the host splices it into the reply
    /// without parsing it again (it still checks that it is UTF-8).
    pub complete_serialized: Option<unsafe extern "C" fn(reply: *mut c_void, body: ByteView)>,
}

/// What [`HostTable::query`] can read.
pub mod host_query {
    /// `{"conn": id, "user": ..., "connected_at": secs, "remote_addr": ...,
    /// "rooms": [...]}`.
    pub const CONN_INFO: u32 = 1;
    /// The JSON value stored under a key with `set_conn_data`.
    pub const CONN_DATA: u32 = 2;
    /// A room's members, `[{"user", "conn"}]`; the key is the room
    /// (`conn_id` ignored).
    pub const ROOM_MEMBERS: u32 = 3;
}

/// The size of the first revision of [`HostTable`] (up to `complete`).
pub const HOST_TABLE_MIN_SIZE: usize = std::mem::offset_of!(HostTable, send_to_conn);

/// The sizes of [`HostTable`]'s revisions, oldest first: 1 ends at
/// `complete`, 2 adds the services up to `call_client`, 4 adds
/// `broadcast_signed_in`, 5 adds `complete_serialized`. A plugin takes the
/// largest revision a host's `size` covers, whole, and nothing past it: a
/// field cut in two by an odd `size` must never read as a function pointer.
pub const HOST_TABLE_REVISIONS: [usize; 4] = [
    HOST_TABLE_MIN_SIZE,
    std::mem::offset_of!(HostTable, broadcast_signed_in),
    std::mem::offset_of!(HostTable, complete_serialized),
    std::mem::size_of::<HostTable>(),
];

// SAFETY: the table is immutable after construction, and the host promises
// that `host_ctx` and both callbacks may be used from any thread.
unsafe impl Send for HostTable {}
// SAFETY: see `Send`: nothing in the table is mutated through a shared reference.
unsafe impl Sync for HostTable {}
