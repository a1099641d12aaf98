//! The plugin's hooks the host calls besides actions: state handoff,
//! shutdown, authentication, room joins and lifecycle events. Each
//! catches panics, since a panic must never unwind into the host.

use super::*;

/// [`PluginDescriptor::save_state`] for plugins built with this crate.
pub(super) unsafe extern "C" fn save_state(sink_ctx: *mut c_void, sink: StateSink) -> u32 {
    let Some(hook) = REGISTERED.get().and_then(|r| r.plugin.save_state.as_ref()) else {
        return state_status::FAILED;
    };
    let (status, bytes) = match catch_unwind(AssertUnwindSafe(hook)) {
        Ok(bytes) => (state_status::OK, bytes),
        Err(payload) => (
            state_status::FAILED,
            format!("save hook panicked: {}", panic_message(&*payload)).into_bytes(),
        ),
    };
    // SAFETY: the host's sink copies the bytes before it returns.
    unsafe { sink(sink_ctx, ByteView::of(&bytes)) };
    status
}

/// [`PluginDescriptor::restore_state`] for plugins built with this crate.
pub(super) unsafe extern "C" fn restore_state(
    state: ByteView,
    sink_ctx: *mut c_void,
    sink: StateSink,
) -> u32 {
    let Some(hook) = REGISTERED
        .get()
        .and_then(|r| r.plugin.restore_state.as_ref())
    else {
        return state_status::FAILED;
    };
    // SAFETY: the host keeps `state` alive until we return.
    let bytes = unsafe { state.as_slice() };
    let reason = match catch_unwind(AssertUnwindSafe(|| hook(bytes))) {
        Ok(Ok(())) => return state_status::OK,
        Ok(Err(reason)) => reason,
        Err(payload) => format!("restore hook panicked: {}", panic_message(&*payload)),
    };
    // SAFETY: the host's sink copies the bytes before it returns.
    unsafe { sink(sink_ctx, ByteView::of(reason.as_bytes())) };
    state_status::FAILED
}

/// [`PluginDescriptor::shutdown`] for plugins built with this crate.
pub(super) unsafe extern "C" fn shutdown_plugin() {
    let (Some(host), Some(registered)) = (HOST.get(), REGISTERED.get()) else {
        return;
    };
    let Some(hook) = &registered.plugin.on_shutdown else {
        return;
    };
    if let Err(payload) = catch_unwind(AssertUnwindSafe(hook)) {
        host_log(
            host,
            log_level::ERROR,
            0,
            &format!("shutdown hook panicked: {}", panic_message(&*payload)),
        );
    }
}

/// [`PluginDescriptor::authenticate`] for plugins built with this crate.
pub(super) unsafe extern "C" fn authenticate(request: *const RawAuthRequest) {
    let (Some(host), Some(registered)) = (HOST.get(), REGISTERED.get()) else {
        return;
    };
    // SAFETY: the host passes a valid request that lives until we return.
    let Some(request) = (unsafe { request.as_ref() }) else {
        return;
    };
    let reply = RawReply {
        host,
        handle: request.reply,
    };
    let Some(hook) = &registered.plugin.authenticate else {
        reply.error(&ActionError::internal(
            "this plugin has no authenticate hook",
        ));
        return;
    };
    // SAFETY: the host keeps these views alive until we return.
    let text = |view: ByteView| unsafe { view_text(view) };
    let ask = AuthRequest {
        token: text(request.token),
        headers: text(request.headers)
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default(),
        query: text(request.query),
        remote_addr: text(request.remote_addr).unwrap_or(""),
        conn_id: request.conn_id,
    };
    match catch_unwind(AssertUnwindSafe(|| hook(&ask))) {
        Ok(Ok(user)) => match serde_json::to_vec(&user) {
            Ok(json) => reply.ok(&json),
            Err(e) => reply.error(&ActionError::internal(format!(
                "could not encode the sign-in: {e}"
            ))),
        },
        Ok(Err(reason)) => reply.error(&ActionError::new(-32001, reason)),
        Err(payload) => reply.panicked(&panic_message(&*payload)),
    }
}

/// [`PluginDescriptor::room_join`] for plugins built with this crate.
pub(super) unsafe extern "C" fn room_join(request: *const RawJoinRequest) {
    let (Some(host), Some(registered)) = (HOST.get(), REGISTERED.get()) else {
        return;
    };
    // SAFETY: the host passes a valid request that lives until we return.
    let Some(request) = (unsafe { request.as_ref() }) else {
        return;
    };
    let reply = RawReply {
        host,
        handle: request.reply,
    };
    // SAFETY: the host keeps these views alive until we return.
    let text = |view: ByteView| unsafe { view_text(view) };
    let (Some(room), Some(pattern)) = (text(request.room), text(request.pattern)) else {
        reply.error(&ActionError::internal(
            "a join request without a room or pattern",
        ));
        return;
    };
    let Some((_, hook)) = registered
        .plugin
        .join_hooks
        .iter()
        .find(|(p, _)| p == pattern)
    else {
        reply.error(&ActionError::internal(format!(
            "no join hook for pattern '{pattern}'"
        )));
        return;
    };
    let ask = JoinRequest {
        room,
        pattern,
        conn_id: request.conn_id,
        user: text(request.user),
    };
    match catch_unwind(AssertUnwindSafe(|| hook(&ask))) {
        Ok(Ok(())) => reply.ok(b"true"),
        Ok(Err(reason)) => reply.error(&ActionError::new(-32002, reason)),
        Err(payload) => reply.panicked(&panic_message(&*payload)),
    }
}

/// [`PluginDescriptor::on_event`] for plugins built with this crate.
pub(super) unsafe extern "C" fn on_event(event: *const ConnectionEvent) {
    let Some(registered) = REGISTERED.get() else {
        return;
    };
    // SAFETY: the host passes a valid event that lives until we return.
    let Some(event) = (unsafe { event.as_ref() }) else {
        return;
    };
    let Some(kind) = EventKind::from_code(event.kind) else {
        return;
    };
    // SAFETY: as above.
    let text = |view: ByteView| unsafe { view_text(view) };
    let seen = Event {
        kind,
        conn_id: event.conn_id,
        user: text(event.user),
        detail: text(event.detail)
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default(),
    };
    for (_, hook) in registered
        .plugin
        .event_hooks
        .iter()
        .filter(|(k, _)| *k == kind)
    {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook(&seen)))
            && let Some(host) = HOST.get()
        {
            host_log(
                host,
                log_level::ERROR,
                event.conn_id,
                &format!("event hook panicked: {}", panic_message(&*payload)),
            );
        }
    }
}
