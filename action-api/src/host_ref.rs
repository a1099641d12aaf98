//! The host's callback table as this plugin keeps it (copied once, at
//! entry), and writing to the host's log through it.

use crate::abi::{ByteView, HostTable};
use std::sync::OnceLock;

/// The host's callback table, copied at entry.
pub(crate) static HOST: OnceLock<HostTable> = OnceLock::new();

/// The host's table, once the host has called the entry symbol.
pub(crate) fn host() -> Option<&'static HostTable> {
    HOST.get()
}

/// Writes `text` to the host's log. Never panics.
pub(crate) fn host_log(host: &HostTable, level: u32, conn_id: u64, text: &str) {
    // SAFETY: the host promises `log` is callable from any thread with its
    // own `host_ctx`, for as long as the library is loaded; `text` outlives
    // the call and the host copies what it keeps.
    unsafe { (host.log)(host.host_ctx, level, conn_id, ByteView::of(text.as_bytes())) }
}
