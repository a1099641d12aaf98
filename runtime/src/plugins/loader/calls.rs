//! Calling into a loaded generation: its actions, its authentication and
//! join hooks (each answering through a reply handle), the state handoff
//! to a successor, and its shutdown hook. Every call that can complete a
//! reply marks the thread as inside the plugin ([`InPlugin`]).

use super::*;

impl LoadedPlugin {
    /// Whether it can hand state to a successor.
    pub fn keeps_state(&self) -> bool {
        self.save_state.is_some()
    }

    /// Whether it takes state from a predecessor.
    pub fn takes_state(&self) -> bool {
        self.restore_state.is_some()
    }

    /// Asks the plugin for its state, copied into host memory; `None`
    /// without a save hook, `Some(Err(reason))` if the save failed.
    pub fn save_state(&self) -> Option<Result<Vec<u8>, String>> {
        let save = self.save_state?;
        let mut bytes: Vec<u8> = Vec::new();
        // SAFETY: the plugin's own hook; it writes through `collect` (which
        // copies into `bytes`) only while it runs, and catches its panics.
        let status = unsafe { save((&raw mut bytes).cast::<c_void>(), collect) };
        Some(if status == action_api::abi::state_status::OK {
            Ok(bytes)
        } else {
            Err(String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// Gives the plugin a predecessor's state before it serves; `Err`
    /// carries the plugin's reason for refusing it. Without a restore hook
    /// it accepts nothing and returns `Ok`.
    pub fn restore_state(&self, state: &[u8]) -> Result<(), String> {
        let Some(restore) = self.restore_state else {
            return Ok(());
        };
        let mut reason: Vec<u8> = Vec::new();
        // SAFETY: the plugin's own hook; `state` outlives the call; it
        // writes its reason through `collect` only while it runs.
        let status = unsafe {
            restore(
                ByteView::of(state),
                (&raw mut reason).cast::<c_void>(),
                collect,
            )
        };
        if status == action_api::abi::state_status::OK {
            Ok(())
        } else if reason.is_empty() {
            Err("its restore hook refused the state".to_owned())
        } else {
            Err(String::from_utf8_lossy(&reason).into_owned())
        }
    }

    /// Starts action number `index` for a caller; the completion arrives
    /// through `reply`. Blocks for as long as the plugin's `call` runs:
    /// call it from a thread that may block.
    pub(crate) fn call(self: &Arc<Self>, index: usize, call: &CallArgs<'_>, reply: PendingReply) {
        let reply = reply
            .holding(Arc::clone(self) as Arc<dyn Pinned>)
            .into_handle();
        self.start(index, call, reply);
    }

    /// Runs action number `index` for a caller right here (an action its
    /// author marked inline), leaving `room` before a success's body (see
    /// [`PendingReply::leaving_room`]). The answer is usually there when
    /// this returns; an inline action may still answer later.
    pub(crate) fn call_inline(
        self: &Arc<Self>,
        index: usize,
        call: &CallArgs<'_>,
        room: usize,
    ) -> Asked {
        invoke::ask_here(self, room, |reply| self.start(index, call, reply))
    }

    /// Calls action number `index` with the reply handle `reply`.
    fn start(&self, index: usize, call: &CallArgs<'_>, reply: *mut c_void) {
        let view = |s: Option<&str>| s.map_or(ByteView::ABSENT, |s| ByteView::of(s.as_bytes()));
        let info = CallInfo {
            size: std::mem::size_of::<CallInfo>() as u32,
            params: ByteView::of(call.params.as_bytes()),
            conn_id: call.conn_id,
            user: view(call.user),
            reply,
            scopes: view(call.scopes),
            conn_data: view(call.conn_data),
        };
        let _inside = InPlugin::enter();
        // SAFETY: `call` is the plugin's own, `index` is within its action
        // list (the registry only holds indices it read from it), and
        // `info` with everything it points to outlives the call.
        unsafe { (self.call)(index, &info) }
    }

    /// Asks the plugin's authentication hook about a connection; the
    /// verdict arrives through `reply`. Returns `false` (and drops `reply`)
    /// when the plugin has no hook. Blocks: call it from a thread that may.
    pub(crate) fn authenticate(
        self: &Arc<Self>,
        request: &AuthArgs<'_>,
        reply: PendingReply,
    ) -> bool {
        let Some(hook) = self.authenticate else {
            return false;
        };
        let view = |s: Option<&str>| s.map_or(ByteView::ABSENT, |s| ByteView::of(s.as_bytes()));
        let raw = AuthRequest {
            size: std::mem::size_of::<AuthRequest>() as u32,
            token: view(request.token),
            headers: ByteView::of(request.headers_json.as_bytes()),
            query: view(request.query),
            remote_addr: ByteView::of(request.remote_addr.as_bytes()),
            conn_id: request.conn_id,
            reply: reply
                .holding(Arc::clone(self) as Arc<dyn Pinned>)
                .into_handle(),
        };
        let _inside = InPlugin::enter();
        // SAFETY: the plugin's own hook; `raw` and what it points to
        // outlive the call; the plugin completes `reply` once.
        unsafe { hook(&raw) };
        true
    }

    /// Asks the plugin's join hook about a room; the verdict arrives
    /// through `reply`. Returns `false` (dropping `reply`) without a hook.
    /// Blocks: call it from a thread that may.
    pub(crate) fn ask_join(self: &Arc<Self>, request: &JoinArgs<'_>, reply: PendingReply) -> bool {
        let Some(hook) = self.room_join else {
            return false;
        };
        let raw = JoinRequest {
            size: std::mem::size_of::<JoinRequest>() as u32,
            room: ByteView::of(request.room.as_bytes()),
            pattern: ByteView::of(request.pattern.as_bytes()),
            conn_id: request.conn_id,
            user: request
                .user
                .map_or(ByteView::ABSENT, |u| ByteView::of(u.as_bytes())),
            reply: reply
                .holding(Arc::clone(self) as Arc<dyn Pinned>)
                .into_handle(),
        };
        let _inside = InPlugin::enter();
        // SAFETY: the plugin's own hook; `raw` and what it points to
        // outlive the call; the plugin completes `reply` once.
        unsafe { hook(&raw) };
        true
    }

    /// Whether the plugin has an authentication hook.
    pub fn has_authenticate(&self) -> bool {
        self.authenticate.is_some()
    }

    /// Runs the plugin's shutdown hook, if it has one.
    pub fn shutdown(&self) {
        if let Some(hook) = self.shutdown {
            // SAFETY: the plugin's own hook; it catches its panics.
            unsafe { hook() }
        }
    }
}

/// The [`action_api::abi::StateSink`] the host passes: appends the
/// plugin's bytes to the `Vec<u8>` behind `ctx`.
unsafe extern "C" fn collect(ctx: *mut c_void, bytes: ByteView) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Vec<u8>` the caller passed, alive and not
        // otherwise borrowed while the plugin runs; `bytes` is valid for
        // this call.
        unsafe {
            if let Some(out) = ctx.cast::<Vec<u8>>().as_mut() {
                out.extend_from_slice(bytes.as_slice());
            }
        }
    }));
}

/// One call's inputs, borrowed for the duration of the plugin's `call`.
#[derive(Debug)]
pub(crate) struct CallArgs<'a> {
    /// The params as JSON text (the ABI promises plugins UTF-8).
    pub(crate) params: &'a str,
    pub(crate) conn_id: u64,
    pub(crate) user: Option<&'a str>,
    pub(crate) scopes: Option<&'a str>,
    pub(crate) conn_data: Option<&'a str>,
}

/// What an authentication hook is asked about.
#[derive(Debug)]
pub(crate) struct AuthArgs<'a> {
    pub(crate) token: Option<&'a str>,
    pub(crate) headers_json: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) remote_addr: &'a str,
    pub(crate) conn_id: u64,
}

/// A join request for a plugin's hook.
#[derive(Debug)]
pub(crate) struct JoinArgs<'a> {
    pub(crate) room: &'a str,
    pub(crate) pattern: &'a str,
    pub(crate) conn_id: u64,
    pub(crate) user: Option<&'a str>,
}
