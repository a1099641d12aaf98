//! The glue behind [`export_plugin!`](crate::export_plugin): the plugin's
//! side of the C ABI. The crate's `unsafe` lives here (the exported entry
//! points and the reading of what the host passes), in [`crate::host_api`]
//! (each call through the host's table) and in [`crate::abi`] (`Send` and
//! `Sync` for the C structs, and reading a byte view).
//!
//! Every function the host can call catches panics: since Rust 1.81 a panic
//! that unwinds out of an `extern "C"` function aborts the whole server.

mod hooks;

use crate::abi::JoinRequest as RawJoinRequest;
use crate::abi::{
    ABI_VERSION, ActionDescriptor, AuthRequest as RawAuthRequest, ByteView, CallInfo,
    ConnectionEvent, HOST_TABLE_MIN_SIZE, HOST_TABLE_REVISIONS, HostTable, PluginDescriptor,
    StateSink, action_flags, log_level, state_status,
};
use crate::action::{Plugin, Reply};
use crate::context::{Context, Logger};
use crate::error::ActionError;
use crate::hooks::{AuthRequest, Event, EventKind, JoinRequest};
use crate::host_ref::{HOST, host_log};
pub(crate) use crate::raw_reply::RawReply;
use hooks::{authenticate, on_event, restore_state, room_join, save_state, shutdown_plugin};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

/// The plugin as built by the author, and the descriptor that points into it.
static REGISTERED: OnceLock<Registered> = OnceLock::new();

struct Registered {
    plugin: Plugin,
    /// Kept alive because `descriptor.actions` points into it.
    _actions: Vec<ActionDescriptor>,
    descriptor: PluginDescriptor,
}

// SAFETY: `Registered` is immutable once built; its raw pointers point into
// `plugin` and `_actions`, which live in the same static and never move.
unsafe impl Send for Registered {}
// SAFETY: see `Send`.
unsafe impl Sync for Registered {}

/// The text of a view, or `None` when it is absent or not UTF-8.
///
/// # Safety
/// `view` is absent or points to bytes that stay valid for `'a`.
unsafe fn view_text<'a>(view: ByteView) -> Option<&'a str> {
    if view.is_absent() {
        return None;
    }
    // SAFETY: per this function's contract.
    std::str::from_utf8(unsafe { view.as_slice() }).ok()
}

/// Text the host passed in a [`CallInfo`](crate::abi::CallInfo). The ABI
/// promises UTF-8 for each of its text fields (the host checked the client's
/// frame once, when it came in, and holds the rest as Rust strings), so
/// it is not checked again on every call; debug builds still check.
///
/// # Safety
/// `bytes` is a text field of the host's `CallInfo`.
unsafe fn host_text(bytes: &[u8]) -> &str {
    debug_assert!(
        std::str::from_utf8(bytes).is_ok(),
        "the host passed call text that is not UTF-8"
    );
    // SAFETY: UTF-8 per the ABI (see above).
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}

/// The body of the exported entry symbol.
///
/// # Safety
/// `host` must be null or point to a [`HostTable`] that stays valid while
/// the library is loaded (the host's side of the entry contract).
#[doc(hidden)]
pub unsafe fn entry(host: *const HostTable, build: fn() -> Plugin) -> *const PluginDescriptor {
    if host.is_null() {
        return std::ptr::null();
    }
    // SAFETY: non-null, and valid per this function's contract; the two
    // leading u32 fields exist in every revision.
    let (abi_version, size) = unsafe {
        (
            std::ptr::read_unaligned(host.cast::<u32>()),
            std::ptr::read_unaligned(host.cast::<u32>().add(1)) as usize,
        )
    };
    if abi_version != ABI_VERSION || size < HOST_TABLE_MIN_SIZE {
        return std::ptr::null();
    }
    // SAFETY: the host's table has `size` readable bytes (this function's
    // contract), and `size` is at least the first revision.
    let host = HOST.get_or_init(|| unsafe { copy_host_table(host, size) });
    let outcome = catch_unwind(|| {
        REGISTERED.get_or_init(|| {
            install_panic_hook();
            register(build())
        });
    });
    match (outcome, REGISTERED.get()) {
        (Ok(()), Some(registered)) => &registered.descriptor,
        (Err(payload), _) => {
            host_log(
                host,
                log_level::ERROR,
                0,
                &format!(
                    "plugin initialisation panicked: {}",
                    panic_message(&*payload)
                ),
            );
            std::ptr::null()
        }
        (Ok(()), None) => std::ptr::null(),
    }
}

/// A copy of the host's table: the largest whole revision its `size`
/// covers ([`HOST_TABLE_REVISIONS`]); an older host's table is shorter,
/// and the callbacks it lacks read as `None`.
///
/// # Safety
/// `host` points to at least `size` readable bytes, and `size` is at least
/// [`HOST_TABLE_MIN_SIZE`].
unsafe fn copy_host_table(host: *const HostTable, size: usize) -> HostTable {
    let whole = HOST_TABLE_REVISIONS
        .iter()
        .rev()
        .copied()
        .find(|revision| *revision <= size)
        .unwrap_or(HOST_TABLE_MIN_SIZE);
    let mut copy = std::mem::MaybeUninit::<HostTable>::zeroed();
    // SAFETY: per this function's contract, `whole` <= `size` bytes are
    // readable, and `whole` <= our own size. Fields past a revision are
    // optional function pointers, for which zero bytes are `None`.
    unsafe {
        std::ptr::copy_nonoverlapping(host.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), whole);
        copy.assume_init()
    }
}

/// Routes this plugin's panic messages (with their location) to the host's
/// log instead of the server's stderr. The hook is this plugin's own: a
/// cdylib links its own copy of std.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if let Some(host) = HOST.get() {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            host_log(
                host,
                log_level::ERROR,
                0,
                &format!("panic{location}: {}", panic_message(info.payload())),
            );
        }
    }));
}

fn register(plugin: Plugin) -> Registered {
    let actions: Vec<ActionDescriptor> = plugin
        .actions
        .iter()
        .map(|action| ActionDescriptor {
            path: ByteView::of(action.path.as_bytes()),
            flags: if action.policy.public {
                action_flags::PUBLIC
            } else {
                0
            } | if action.policy.inline {
                action_flags::INLINE
            } else {
                0
            },
            timeout_ms: action.policy.timeout.map_or(0, |t| {
                u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
            }),
            scopes: if action.policy.scopes.is_empty() {
                ByteView::ABSENT
            } else {
                ByteView::of(action.policy.scopes.as_bytes())
            },
            rate_per_sec: action.policy.rate_limit.map_or(0, |(rate, _)| rate),
            rate_burst: action.policy.rate_limit.map_or(0, |(_, burst)| burst),
        })
        .collect();
    let descriptor = PluginDescriptor {
        abi_version: ABI_VERSION,
        size: std::mem::size_of::<PluginDescriptor>() as u32,
        name: ByteView::of(plugin.name.as_bytes()),
        version: ByteView::of(plugin.version.as_bytes()),
        actions: actions.as_ptr(),
        action_count: actions.len(),
        action_size: std::mem::size_of::<ActionDescriptor>(),
        call: call_action,
        shutdown: Some(shutdown_plugin),
        authenticate: plugin.authenticate.is_some().then_some(authenticate as _),
        on_event: (!plugin.event_hooks.is_empty()).then_some(on_event as _),
        event_mask: plugin
            .event_hooks
            .iter()
            .fold(0, |mask, (kind, _)| mask | (1 << kind.code())),
        room_join: (!plugin.join_hooks.is_empty()).then_some(room_join as _),
        room_patterns: if plugin.join_patterns.is_empty() {
            ByteView::ABSENT
        } else {
            ByteView::of(plugin.join_patterns.as_bytes())
        },
        save_state: plugin.save_state.is_some().then_some(save_state as _),
        restore_state: plugin.restore_state.is_some().then_some(restore_state as _),
    };
    Registered {
        plugin,
        _actions: actions,
        descriptor,
    }
}

/// [`PluginDescriptor::call`] for plugins built with this crate.
unsafe extern "C" fn call_action(action: usize, call: *const CallInfo) {
    let (Some(host), Some(registered)) = (HOST.get(), REGISTERED.get()) else {
        return;
    };
    if call.is_null() {
        return;
    }
    // An older host passes a shorter `CallInfo`: copy only the revision it
    // sent (its leading `size` says how long), the rest reads as absent.
    // SAFETY: the host passes a valid `CallInfo` of at least `size` bytes
    // that lives until we return; every field is an integer or a (null-
    // able) pointer, so the zero-filled tail is a valid value.
    let call: CallInfo = unsafe {
        let size = (std::ptr::read_unaligned(call.cast::<u32>()) as usize)
            .min(std::mem::size_of::<CallInfo>());
        let mut copy = std::mem::MaybeUninit::<CallInfo>::zeroed();
        std::ptr::copy_nonoverlapping(call.cast::<u8>(), copy.as_mut_ptr().cast::<u8>(), size);
        copy.assume_init()
    };
    let call = &call;
    let mut slot = Some(Reply::new(RawReply {
        host,
        handle: call.reply,
    }));
    let Some(action) = registered.plugin.actions.get(action) else {
        if let Some(reply) = slot.take() {
            reply.send::<()>(Err(ActionError::internal(format!(
                "the plugin has no action number {action}"
            ))));
        }
        return;
    };
    // SAFETY: the host keeps `params` and `user` alive until we return; we
    // use them only inside this call.
    let (params, user) = unsafe { (call.params.as_slice(), call.user.as_slice()) };
    // SAFETY: text fields of the host's `CallInfo`.
    let params = if params.is_empty() {
        "null"
    } else {
        unsafe { host_text(params) }
    };
    // SAFETY: as above.
    let user = (!call.user.is_absent()).then(|| unsafe { host_text(user) });
    // Fields appended in revision 2 are read only if the host sent them.
    let has_rev2 = call.size as usize >= std::mem::size_of::<CallInfo>();
    // SAFETY: present per `size`, and alive until we return.
    let (scopes, conn_data) = if has_rev2 {
        unsafe {
            (
                call.scopes.as_slice(),
                (!call.conn_data.is_absent()).then(|| call.conn_data.as_slice()),
            )
        }
    } else {
        (&[][..], None)
    };
    // A host too old to pass scopes cannot have checked them either: refuse
    // rather than run an action that needs scopes for any signed-in caller.
    if !has_rev2 && !action.policy.scopes.is_empty() {
        if let Some(reply) = slot.take() {
            reply.send::<()>(Err(ActionError::new(
                -32002,
                "this action needs scopes, which this server is too old to check; upgrade the server",
            )));
        }
        return;
    }
    let ctx = Context {
        conn_id: call.conn_id,
        user,
        // SAFETY: text fields of the host's `CallInfo`.
        scopes: unsafe { host_text(scopes) },
        // SAFETY: as above.
        conn_data: conn_data.map(|d| unsafe { host_text(d) }),
        logger: Logger::new(host, call.conn_id),
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        (action.handler)(&ctx, params, &mut slot)
    }));
    if let Err(payload) = outcome {
        let message = panic_message(&*payload);
        match slot.take() {
            Some(reply) => {
                if let Some(raw) = reply.into_raw() {
                    raw.panicked(&message);
                }
            }
            None => host_log(
                host,
                log_level::ERROR,
                call.conn_id,
                &format!(
                    "action '{}' panicked after answering: {message}",
                    action.path
                ),
            ),
        }
    }
}

/// Exports a plugin: the argument is a function `fn() -> Plugin` that
/// builds it. Write this once, at the root of a `cdylib` crate.
///
/// ```
/// use action_api::{Action, ActionError, Context, Plugin};
///
/// fn hello(_ctx: &Context<'_>, name: String) -> Result<String, ActionError> {
///     Ok(format!("hello, {name}"))
/// }
///
/// fn plugin() -> Plugin {
///     Plugin::new("hello", env!("CARGO_PKG_VERSION")).action(Action::new("hello", hello).public())
/// }
/// action_api::export_plugin!(plugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($build:path) => {
        /// The Switchboard entry symbol (ABI version 1).
        ///
        /// # Safety
        /// Called by the Switchboard host with a valid host table.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn switchboard_plugin_v1(
            host: *const $crate::abi::HostTable,
        ) -> *const $crate::abi::PluginDescriptor {
            // SAFETY: the host's side of the entry contract is forwarded as is.
            unsafe { $crate::__private::entry(host, $build) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;

    unsafe extern "C" fn log(_: *const c_void, _: u32, _: u64, _: ByteView) {}
    unsafe extern "C" fn complete(_: *mut c_void, _: u32, _: ByteView) {}
    unsafe extern "C" fn complete_serialized(_: *mut c_void, _: ByteView) {}
    unsafe extern "C" fn send(_: *const c_void, _: u64, _: ByteView, _: ByteView) -> u32 {
        1
    }
    unsafe extern "C" fn broadcast(
        _: *const c_void,
        _: ByteView,
        _: ByteView,
        _: *const u64,
        _: usize,
    ) -> u64 {
        1
    }

    /// A table with every callback set and `size` as given.
    fn full_table(size: usize) -> HostTable {
        HostTable {
            abi_version: ABI_VERSION,
            size: size as u32,
            host_ctx: std::ptr::null(),
            log,
            complete,
            send_to_conn: Some(send),
            send_to_user: None,
            broadcast: Some(broadcast),
            publish: None,
            set_membership: None,
            query: None,
            set_conn_data: None,
            call_client: None,
            broadcast_signed_in: Some(broadcast),
            complete_serialized: Some(complete_serialized),
        }
    }

    #[test]
    fn only_whole_revisions_of_the_host_table_are_taken() {
        // A size that ends inside `send_to_conn`: the first revision only.
        let table = full_table(HOST_TABLE_MIN_SIZE + 4);
        // SAFETY: the table is a whole `HostTable`, larger than any size used.
        let copy = unsafe { copy_host_table(&table, HOST_TABLE_MIN_SIZE + 4) };
        assert!(copy.send_to_conn.is_none(), "half a pointer was taken");
        assert!(copy.broadcast.is_none());
        // Revision 2, and half of `broadcast_signed_in`.
        let size = HOST_TABLE_REVISIONS[1] + 4;
        // SAFETY: as above.
        let copy = unsafe { copy_host_table(&full_table(size), size) };
        assert!(copy.send_to_conn.is_some() && copy.broadcast.is_some());
        assert!(copy.broadcast_signed_in.is_none());
        // Revision 4: `broadcast_signed_in`, not `complete_serialized`.
        let size = HOST_TABLE_REVISIONS[2];
        // SAFETY: as above.
        let copy = unsafe { copy_host_table(&full_table(size), size) };
        assert!(copy.broadcast_signed_in.is_some());
        assert!(copy.complete_serialized.is_none());
        // Everything.
        let size = std::mem::size_of::<HostTable>();
        // SAFETY: as above.
        let copy = unsafe { copy_host_table(&full_table(size), size) };
        assert!(copy.broadcast_signed_in.is_some() && copy.complete_serialized.is_some());
    }
}
