//! [`RawReply`]: the host's reply handle for one call, completed exactly
//! once (consuming it) with a result, an error or a panic message.

use crate::abi::{ByteView, HostTable, status};
use crate::error::ActionError;
use std::ffi::c_void;

/// The host's reply handle for one call, plus the table to complete it with.
#[derive(Debug)]
pub(crate) struct RawReply {
    pub(crate) host: &'static HostTable,
    pub(crate) handle: *mut c_void,
}

// SAFETY: the host promises `complete` may be called from any thread, once,
// with this handle.
unsafe impl Send for RawReply {}

impl RawReply {
    fn complete(self, status: u32, body: &[u8]) {
        // SAFETY: `handle` came from the host for this call and `self` is
        // consumed, so it is completed exactly once; the host copies `body`.
        unsafe { (self.host.complete)(self.handle, status, ByteView::of(body)) }
    }

    /// Answers with `json` known to be JSON (serde_json wrote it, or it
    /// is the params the host checked): through `complete_serialized`
    /// when the host has it, so the host need not parse it again.
    pub(crate) fn ok(self, json: &[u8]) {
        match self.host.complete_serialized {
            // SAFETY: as in `complete`; `json` is JSON (what
            // serde_json wrote, or the call's own params,
            // which the host checked), which is what `complete_serialized`
            // asks for.
            Some(complete) => unsafe { complete(self.handle, ByteView::of(json)) },
            None => self.complete(status::OK, json),
        }
    }

    /// Answers with `json` for the host to check: it may not be JSON.
    pub(crate) fn ok_unchecked(self, json: &[u8]) {
        self.complete(status::OK, json)
    }

    pub(crate) fn error(self, err: &ActionError) {
        self.complete(status::ACTION_ERROR, &err.to_json_bytes())
    }

    pub(crate) fn panicked(self, message: &str) {
        self.complete(status::PANICKED, message.as_bytes())
    }
}
