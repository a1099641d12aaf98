//! The host's side of the callback table ([`HostTable`]): the table
//! itself, and the log-line callback every plugin gets (completions are in
//! [`super::replies`], the shims of the server's services in
//! [`super::services`]). The table's `host_ctx` is the plugin's
//! `PluginLogContext`, which also leads to its server's services.
//!
//! Both callbacks are `extern "C"` functions that plugins call from any
//! thread; both catch panics, since a panic unwinding into plugin code
//! would abort the server.

use super::context::PluginLogContext;
use action_api::abi::{ABI_VERSION, ByteView, HostTable, log_level};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Builds the callback table for one plugin. The table hands `ctx` to the
/// plugin as a raw pointer it may use for as long as its library is
/// mapped, so `ctx` is `'static` (the loader leaks one per generation:
/// a few dozen bytes, and a generation may stay mapped for the life of the
/// process anyway).
pub(crate) fn host_table(ctx: &'static PluginLogContext) -> HostTable {
    HostTable {
        abi_version: ABI_VERSION,
        size: std::mem::size_of::<HostTable>() as u32,
        host_ctx: (ctx as *const PluginLogContext).cast(),
        log: log_line,
        complete: super::replies::complete_call,
        send_to_conn: Some(super::shims::send_to_conn),
        send_to_user: Some(super::shims::send_to_user),
        broadcast: Some(super::shims::broadcast),
        publish: Some(super::shims::publish),
        set_membership: Some(super::shims::set_membership),
        query: Some(super::shims::query),
        set_conn_data: Some(super::shims::set_conn_data),
        call_client: Some(super::shims::call_client),
        broadcast_signed_in: Some(super::shims::broadcast_signed_in),
        complete_serialized: Some(super::replies::complete_serialized),
    }
}

unsafe extern "C" fn log_line(host_ctx: *const c_void, level: u32, conn_id: u64, msg: ByteView) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `host_ctx` is the `PluginLogContext` this table was built
        // with, which lives as long as the plugin's library.
        let ctx = unsafe { host_ctx.cast::<PluginLogContext>().as_ref() };
        let plugin = ctx.map_or("?", PluginLogContext::label);
        let generation = ctx.map_or(0, |c| c.generation);
        // SAFETY: the plugin passes bytes that live for this call.
        let text = log_safe(&String::from_utf8_lossy(unsafe { msg.as_slice() }));
        let conn = (conn_id != 0).then_some(conn_id);
        match level {
            log_level::ERROR => {
                tracing::error!(target: "plugin", plugin, generation, conn, "{text}")
            }
            log_level::WARN => tracing::warn!(target: "plugin", plugin, generation, conn, "{text}"),
            log_level::INFO => tracing::info!(target: "plugin", plugin, generation, conn, "{text}"),
            log_level::DEBUG => {
                tracing::debug!(target: "plugin", plugin, generation, conn, "{text}")
            }
            _ => tracing::trace!(target: "plugin", plugin, generation, conn, "{text}"),
        }
    }));
}

/// The longest plugin log message kept, in characters.
const MAX_LOG_CHARS: usize = 4096;

/// A plugin's log message made safe for a line-based log: control
/// characters (newlines above all) escaped, so text a client passed to a
/// plugin cannot forge log lines, and cut to [`MAX_LOG_CHARS`].
fn log_safe(text: &str) -> String {
    let mut safe = String::with_capacity(text.len().min(MAX_LOG_CHARS));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_LOG_CHARS {
            safe.push_str("... (cut)");
            break;
        }
        if c.is_control() {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_cannot_carry_line_breaks_and_are_bounded() {
        assert_eq!(log_safe("k\nFORGED line"), "k\\nFORGED line");
        assert_eq!(log_safe("a\r\x1b[31m\u{7}b"), "a\\r\\u{1b}[31m\\u{7}b");
        assert_eq!(log_safe("héllo, wörld"), "héllo, wörld");
        let long = "x".repeat(10_000);
        assert_eq!(log_safe(&long).chars().count(), MAX_LOG_CHARS + 9);
    }
}
