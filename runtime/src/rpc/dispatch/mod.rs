//! From a parsed request to its reply: built-ins inline, actions on the
//! action pool under a deadline, every failure mapped to a protocol code.
//!
//! An ordinary action never runs on a runtime worker: a plugin's `call`
//! may sleep or spin, so it runs on the [`ActionThreads`] pool
//! ([`PoolCall`]), and the connection only waits for its completion (with
//! a timeout); a slow call never delays other calls, on its connection or
//! any other. An action its
//! author marked inline (it never blocks, and finishes in microseconds)
//! runs on the connection's own task instead, with no hand-off and no
//! deadline.

use crate::action_threads::{ActionThreads, Job};
use crate::auth::Identity;
use crate::call_slots::CallSlot;
use crate::lifecycle;
use crate::metrics::ActionMetrics;
use crate::plugins::ActionEntry;
use crate::plugins::invoke::{Answered, Asked, Deadline, PluginFault};
use crate::plugins::loader::CallArgs;
use crate::plugins::replies::PendingReply;
use crate::rpc::builtins::Builtin;
use crate::rpc::error::{ErrorCode, RpcError};
use crate::rpc::protocol::{self, Answer, Envelope, FrameSource, FrameText, share};
use crate::rpc::session::Session;
use crate::state::ServerState;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

/// What dispatching one request produced.
pub enum Dispatched {
    /// The answer is ready (`None`: a notification, nothing to send).
    Ready(Option<String>),
    /// An action is running; the future yields its reply (`None` for a
    /// notification).
    Running(BoxFuture<'static, Option<String>>),
    /// A call to an action on the pool, checked and ready to start: a
    /// connection starts it with its answer going to its inbox
    /// ([`PoolCall::start`]); anyone else awaits it
    /// ([`PoolCall::into_future`]).
    Pool(PoolCall),
}

impl std::fmt::Debug for Dispatched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dispatched::Ready(reply) => f.debug_tuple("Ready").field(reply).finish(),
            Dispatched::Running(_) => f.write_str("Running(..)"),
            Dispatched::Pool(call) => f.debug_tuple("Pool").field(call).finish(),
        }
    }
}

/// How a call failed: a runtime refusal, or the action's own error object.
#[derive(Debug)]
enum CallError {
    Rpc(RpcError),
    Action(String),
}

impl From<RpcError> for CallError {
    fn from(e: RpcError) -> CallError {
        CallError::Rpc(e)
    }
}

/// A room call on a broker that waits (a cluster's, on Redis): runs beside
/// the connection's other calls, after its earlier room calls (its lane),
/// so a slow Redis delays neither a ping nor an action, and a client's
/// publishes keep their order.
fn room_call_in_lane(
    state: &Arc<ServerState>,
    session: &mut Session,
    builtin: Builtin,
    envelope: &Envelope<'_>,
    frame: &Bytes,
    text: &str,
    id: Option<FrameText>,
) -> Dispatched {
    let caller = session.room_caller();
    let turn = session.room_turn();
    let state = Arc::clone(state);
    let params = envelope.params.map(|p| share(frame, text, p));
    let metrics: &'static ActionMetrics = crate::metrics::global().builtin(&envelope.method);
    let started = Instant::now();
    Dispatched::Running(Box::pin(async move {
        turn.wait().await;
        let outcome = builtin
            .run_room(&state, &caller, params.as_deref())
            .await
            .map_err(CallError::from);
        record(metrics, started, &outcome);
        reply(id.as_deref(), outcome)
    }))
}

/// Counts a call's outcome and latency (from `started` to now) in its
/// action's metrics; returns the moment read as now.
fn record(
    metrics: &ActionMetrics,
    started: Instant,
    outcome: &Result<String, CallError>,
) -> Instant {
    let now = Instant::now();
    record_ended(metrics, started, now, outcome);
    now
}

/// [`record`] for a call that ended at `ended`.
fn record_ended(
    metrics: &ActionMetrics,
    started: Instant,
    ended: Instant,
    outcome: &Result<String, CallError>,
) {
    metrics.record(
        ended.saturating_duration_since(started),
        match outcome {
            Ok(_) => Ok(()),
            Err(CallError::Rpc(error)) => Err(Some(error.code)),
            Err(CallError::Action(_)) => Err(None),
        },
    );
}

/// Builds the reply for a call's outcome (`None` for a notification).
fn reply(id: Option<&str>, outcome: Result<String, CallError>) -> Option<String> {
    let id = id?;
    Some(match outcome {
        Ok(result) => protocol::reply_ok_around(id, result),
        Err(CallError::Rpc(error)) => protocol::reply_error(Some(id), &error),
        Err(CallError::Action(object)) => protocol::reply_error_object(Some(id), &object),
    })
}

/// Dispatches one request. `frame` is the buffer `text` lives in, so the
/// id and params can be shared instead of copied. Only `rpc.auth` awaits
/// (a sign-in must take effect before the next frame is read); everything
/// else returns at once.
pub async fn dispatch(
    state: &Arc<ServerState>,
    session: &mut Session,
    envelope: &Envelope<'_>,
    frame: &Bytes,
    text: &str,
) -> Dispatched {
    if let Some(answer) = envelope.answer {
        deliver_answer(state, session, envelope, answer);
        return Dispatched::Ready(None);
    }
    let method: &str = &envelope.method;
    let started = Instant::now();
    if method.starts_with("rpc.") {
        let id = envelope.id.map(|id| share(frame, text, id));
        if method == "rpc.publish"
            && let Err(error) = session.rates.take_publish(&state.config, started)
        {
            let outcome = Err(error.into());
            record(crate::metrics::global().builtin(method), started, &outcome);
            return Dispatched::Ready(reply(id.as_deref(), outcome));
        }
        let builtin = Builtin::from_method(method);
        if let Some(builtin) = builtin.filter(|b| b.is_room_call() && state.broker.waits()) {
            return room_call_in_lane(state, session, builtin, envelope, frame, text, id);
        }
        let outcome = match builtin {
            // Boxed: a built-in may wait (a sign-in on an auth plugin), and
            // its state would otherwise make every connection's task, idle
            // or not, that much larger.
            Some(builtin) => Box::pin(builtin.run(state, session, envelope.params))
                .await
                .map_err(CallError::from),
            None => Err(RpcError::new(
                ErrorCode::MethodNotFound,
                format!("no built-in method '{method}'"),
            )
            .into()),
        };
        record(crate::metrics::global().builtin(method), started, &outcome);
        return Dispatched::Ready(reply(id.as_deref(), outcome));
    }
    let mut clock = started;
    dispatch_action(
        state,
        session,
        envelope,
        FrameSource::Shared { frame, text },
        &mut clock,
    )
}

/// Dispatches one request at once if it waits for nothing: a call to an
/// action. `None` for a built-in (`rpc.*`) or an answer to a server call,
/// which [`dispatch`] takes.
///
/// `clock` is a moment just read, taken as the call's start (a connection
/// handling a burst of frames passes the end of the call before, so each
/// call reads the clock once); when the call was answered at once, it is
/// left at the moment its answer was counted.
pub fn dispatch_now(
    state: &Arc<ServerState>,
    session: &mut Session,
    envelope: &Envelope<'_>,
    frame: FrameSource<'_>,
    clock: &mut Instant,
) -> Option<Dispatched> {
    if !is_action_call(envelope) {
        return None;
    }
    Some(dispatch_action(state, session, envelope, frame, clock))
}

/// Whether `envelope` calls an action (not a built-in, not an answer to a
/// server call): what [`dispatch_now`] takes.
pub fn is_action_call(envelope: &Envelope<'_>) -> bool {
    envelope.answer.is_none() && !envelope.method.starts_with("rpc.")
}

/// A call to an action: checked (sign-in, scopes, rates, slots), then run
/// inline or handed to the action pool.
fn dispatch_action(
    state: &Arc<ServerState>,
    session: &mut Session,
    envelope: &Envelope<'_>,
    frame: FrameSource<'_>,
    clock: &mut Instant,
) -> Dispatched {
    let started = *clock;
    let method: &str = &envelope.method;
    // The id as text: sliced out of the frame only for a call answered
    // later.
    let id = envelope.id;
    // Borrowed, not cloned, for the call's length: an inline call takes no
    // reference counts of its own.
    let snapshot = state.registry.snapshot();
    let entry = match authorize(&snapshot, session, method, started) {
        Ok(entry) => entry,
        Err(error) => {
            let metrics = snapshot
                .get(method)
                .map_or(crate::metrics::global().builtin(""), |e| &e.metrics);
            let outcome = Err(error.into());
            *clock = record(metrics, started, &outcome);
            return Dispatched::Ready(reply(id, outcome));
        }
    };
    if let Some(limit) = entry.rate_limit
        && let Err(error) = session.rates.take_action(&entry.path, limit, started)
    {
        let outcome = Err(error.into());
        *clock = record(&entry.metrics, started, &outcome);
        return Dispatched::Ready(reply(id, outcome));
    }
    entry.plugin.count_call();
    // Who it runs for: `authorize` found the sign-in live (or the action
    // public, when there may be none).
    let identity = session.live_identity_at(started);
    if entry.inline {
        return run_inline(
            (state, session),
            entry,
            identity.map(|i| &**i),
            envelope.params,
            (id, frame),
            clock,
        );
    }
    let identity = identity.cloned();
    let report_errors = snapshot.wants_event(lifecycle::ERROR);
    // The entry's metrics are not cloned (three reference counts): the
    // call counts itself through its own reference to the entry.
    match with_slots(state, session, Arc::clone(entry), identity, report_errors) {
        Ok(mut prepared) => {
            if prepared.report_errors {
                prepared.registry_events = Some(Arc::clone(state));
            }
            Dispatched::Pool(PoolCall {
                prepared,
                params: envelope.params.map(|p| frame.share(p)),
                id: id.map(|id| frame.share(id)),
                started,
            })
        }
        Err(error) => {
            let outcome = Err(error.into());
            *clock = record(&entry.metrics, started, &outcome);
            Dispatched::Ready(reply(id, outcome))
        }
    }
}

/// Hands a client's answer to the server call waiting for it. An answer
/// nobody waits for (late, or not for this connection) is dropped: JSON-RPC
/// never replies to a response.
fn deliver_answer(state: &ServerState, session: &Session, envelope: &Envelope<'_>, answer: Answer) {
    let Some(id) = envelope
        .id
        .and_then(|id| serde_json::from_str::<String>(id).ok())
    else {
        return;
    };
    tracing::debug!(conn = session.conn_id, id, "answer to a server call");
    let body = envelope.params.unwrap_or("null").to_owned();
    let answer = match answer {
        Answer::Result => Ok(body),
        Answer::Error => Err(body),
    };
    if !state.hub.answer_call(session.conn_id, &id, answer) {
        tracing::debug!(
            conn = session.conn_id,
            id,
            "an answer to no waiting server call was dropped"
        );
    }
}

/// Runs an action its author marked inline (it never blocks and finishes
/// in microseconds) right here on the connection's task: no task, no
/// thread hand-off, no call slot.
///
/// If the plugin answers later after all, the call then takes the
/// connection's and the server's call slots, as a pool call does, and its
/// answer is awaited under the action's deadline like any other; so a
/// client cannot keep more such calls waiting than
/// `max_inflight_per_connection`. Past a limit the client is refused at
/// once, and the plugin's answer, when it comes, is dropped.
fn run_inline(
    (state, session): (&ServerState, &Session),
    entry: &Arc<ActionEntry>,
    identity: Option<&Identity>,
    params: Option<&str>,
    (id, frame): (Option<&str>, FrameSource<'_>),
    clock: &mut Instant,
) -> Dispatched {
    let started = *clock;
    let params = params.unwrap_or("null");
    let args = call_args(params, session.conn_id, identity);
    let room = reply_room(id);
    let mut asked = entry.plugin.call_inline(entry.index, &args, room);
    if let Some(answer) = asked.now() {
        let outcome = interpret(entry, answer);
        *clock = record(&entry.metrics, started, &outcome);
        return Dispatched::Ready(reply(id, outcome));
    }
    let slots = match take_slots(state, session) {
        Ok(slots) => slots,
        Err(error) => {
            let error = RpcError::new(
                error.code,
                format!(
                    "{} (action '{}' answers later; this call's answer will be dropped)",
                    error.message, entry.path
                ),
            );
            let outcome = Err(error.into());
            *clock = record(&entry.metrics, started, &outcome);
            return Dispatched::Ready(reply(id, outcome));
        }
    };
    let entry = Arc::clone(entry);
    let id = id.map(|id| frame.share(id));
    Dispatched::Running(Box::pin(async move {
        let answer = asked
            .answer(Deadline::starting(started, entry.timeout))
            .await;
        drop(slots);
        let outcome = interpret(&entry, answer);
        record(&entry.metrics, started, &outcome);
        reply(id.as_deref(), outcome)
    }))
}

/// The room to leave before a call's result for its reply's head (none
/// for a notification): the reply is then made in the result's buffer.
fn reply_room(id: Option<&str>) -> usize {
    id.map_or(0, protocol::reply_head_len)
}

/// What a plugin's `call` gets: the raw params and who is calling.
fn call_args<'a>(params: &'a str, conn_id: u64, identity: Option<&'a Identity>) -> CallArgs<'a> {
    CallArgs {
        params,
        conn_id,
        user: identity.map(|i| &*i.user),
        scopes: identity.map(|i| &*i.scopes).filter(|s| !s.is_empty()),
        conn_data: identity.and_then(|i| i.data.as_deref()),
    }
}

/// A call that passed every check, holding what it needs to run.
struct PreparedCall {
    entry: Arc<ActionEntry>,
    conn_id: u64,
    identity: Option<Arc<Identity>>,
    connection_slot: CallSlot,
    server_slot: CallSlot,
    /// Whether any plugin listens for lifecycle `error` events.
    report_errors: bool,
    /// Where to report failures as lifecycle `error` events.
    registry_events: Option<Arc<ServerState>>,
    /// Where it runs.
    threads: ActionThreads<PoolJob>,
}

/// The action at `method`, if this connection may call it (it exists; the
/// connection is signed in, unless the action is public; its token has the
/// action's scopes).
fn authorize<'s>(
    snapshot: &'s crate::plugins::registry::RegistrySnapshot,
    session: &Session,
    method: &str,
    now: Instant,
) -> Result<&'s Arc<ActionEntry>, RpcError> {
    let entry = snapshot
        .get(method)
        .ok_or_else(|| RpcError::new(ErrorCode::MethodNotFound, format!("no action '{method}'")))?;
    if entry.public {
        return Ok(entry);
    }
    let identity = session.require_identity_at(method, now)?;
    if !identity.has_scopes(&entry.scopes) {
        return Err(RpcError::new(
            ErrorCode::Forbidden,
            format!(
                "action '{method}' needs scope(s) {}; this connection's token has {}",
                entry.scopes.join(", "),
                if identity.scopes.is_empty() {
                    "none".to_owned()
                } else {
                    identity.scopes.replace(' ', ", ")
                }
            ),
        ));
    }
    Ok(entry)
}

/// Takes the connection's and the server's call slots for a pool call.
fn with_slots(
    state: &ServerState,
    session: &Session,
    entry: Arc<ActionEntry>,
    identity: Option<Arc<Identity>>,
    report_errors: bool,
) -> Result<PreparedCall, RpcError> {
    let (connection_slot, server_slot) = take_slots(state, session)?;
    Ok(PreparedCall {
        entry,
        conn_id: session.conn_id,
        identity,
        connection_slot,
        server_slot,
        report_errors,
        registry_events: None,
        threads: state.action_threads.clone(),
    })
}

/// The connection's and the server's call slots, or the refusal to give
/// when either limit is reached.
fn take_slots(state: &ServerState, session: &Session) -> Result<(CallSlot, CallSlot), RpcError> {
    let connection_slot = session.inflight.try_take().ok_or_else(|| {
        RpcError::new(
            ErrorCode::Overloaded,
            format!(
                "this connection already has {} calls running; wait for some replies",
                state.config.max_inflight_per_connection
            ),
        )
    })?;
    let server_slot = state.inflight.try_take().ok_or_else(|| {
        RpcError::new(
            ErrorCode::Overloaded,
            format!(
                "the server is running its limit of {} calls; retry shortly",
                state.config.max_inflight_calls
            ),
        )
    })?;
    Ok((connection_slot, server_slot))
}

/// A call to an action on the pool that passed every check, not started
/// yet ([`Dispatched::Pool`]).
pub struct PoolCall {
    prepared: PreparedCall,
    params: Option<FrameText>,
    id: Option<FrameText>,
    /// When the call began (its deadline counts from here).
    started: Instant,
}

/// A call handed to the action pool: what its thread needs to run it.
/// Queued as it is, not boxed (see [`crate::action_threads::Job`]).
pub struct PoolJob {
    entry: Arc<ActionEntry>,
    params: Option<FrameText>,
    conn_id: u64,
    identity: Option<Arc<Identity>>,
    reply: PendingReply,
    /// The connection's and the server's call slots, held until the
    /// plugin returns.
    _slots: (CallSlot, CallSlot),
}

impl std::fmt::Debug for PoolJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolJob")
            .field("action", &self.entry.path)
            .field("conn_id", &self.conn_id)
            .finish_non_exhaustive()
    }
}

impl Job for PoolJob {
    fn run(self) {
        let params = self.params.as_deref().unwrap_or("null");
        let args = call_args(params, self.conn_id, self.identity.as_deref());
        self.entry.plugin.call(self.entry.index, &args, self.reply);
    }
}

/// A pool call started: what answering it takes once the plugin has (or
/// its deadline has passed).
pub struct Waiting {
    entry: Arc<ActionEntry>,
    id: Option<FrameText>,
    started: Instant,
    conn_id: u64,
    /// Who it ran for, kept only to report a failure to listeners.
    user: Option<Arc<str>>,
    /// Where to report failures as lifecycle `error` events.
    registry_events: Option<Arc<ServerState>>,
}

impl std::fmt::Debug for PoolCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCall")
            .field("action", &self.prepared.entry.path)
            .field("id", &self.id.as_deref())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("action", &self.entry.path)
            .field("id", &self.id.as_deref())
            .finish_non_exhaustive()
    }
}

impl PoolCall {
    /// When the call's deadline passes: its action's timeout after it
    /// began (`None`: a timeout beyond what an `Instant` holds, none).
    pub fn deadline(&self) -> Option<Instant> {
        self.started.checked_add(self.prepared.entry.timeout)
    }

    /// Hands the call to the action pool, its answer to go to `reply`; a
    /// success's body comes after room for its reply's head (see
    /// [`reply_room`]). Both call slots stay with the thread: a call past
    /// its deadline still occupies them until the plugin returns, so a
    /// client calling an action that hangs uses up its own connection's
    /// slots, not the whole server's.
    pub(crate) fn start(self, reply: PendingReply) -> Waiting {
        let PoolCall {
            prepared:
                PreparedCall {
                    entry,
                    conn_id,
                    identity,
                    connection_slot,
                    server_slot,
                    report_errors: _,
                    registry_events,
                    threads,
                },
            params,
            id,
            started,
        } = self;
        let user = registry_events
            .as_ref()
            .and(identity.as_ref())
            .map(|i| Arc::clone(&i.user));
        let reply = reply.leaving_room(reply_room(id.as_deref()));
        threads.run(PoolJob {
            entry: Arc::clone(&entry),
            params,
            conn_id,
            identity,
            reply,
            _slots: (server_slot, connection_slot),
        });
        Waiting {
            entry,
            id,
            started,
            conn_id,
            user,
            registry_events,
        }
    }

    /// Starts the call, and waits for its answer under its deadline: its
    /// reply (`None` for a notification).
    pub fn into_future(self) -> BoxFuture<'static, Option<String>> {
        let deadline = Deadline::starting(self.started, self.prepared.entry.timeout);
        let (reply, answer) = PendingReply::new();
        let waiting = self.start(reply);
        Box::pin(async move {
            let answer = Asked::awaited(answer).answer(deadline).await;
            waiting.answered(answer, Instant::now())
        })
    }
}

impl Waiting {
    /// The call's reply (`None` for a notification) to the plugin's
    /// `answer`, taken at `ended` (the calls a connection takes from its
    /// inbox together share one clock read); its outcome is counted, and
    /// a failure reported to lifecycle listeners.
    pub(crate) fn answered(
        self,
        answer: Result<Answered, PluginFault>,
        ended: Instant,
    ) -> Option<String> {
        // A span per call only when debug logging wants it.
        let _span = tracing::enabled!(tracing::Level::DEBUG).then(|| {
            tracing::debug_span!(
                "call",
                method = &*self.entry.path,
                id = self.id.as_deref(),
                generation = self.entry.plugin.generation
            )
            .entered()
        });
        let outcome = interpret(&self.entry, answer);
        record_ended(&self.entry.metrics, self.started, ended, &outcome);
        if let (Some(state), Err(CallError::Rpc(error))) = (&self.registry_events, &outcome)
            && matches!(error.code, ErrorCode::Timeout | ErrorCode::ActionFailed)
        {
            let path = &self.entry.path;
            lifecycle::emit(
                &state.registry,
                lifecycle::ERROR,
                self.conn_id,
                self.user.as_ref(),
                || serde_json::json!({"error": error.message, "code": error.code.code(), "action": path}),
            );
        }
        tracing::debug!(ok = outcome.is_ok(), "answered");
        reply(self.id.as_deref(), outcome)
    }

    /// The reply of a call whose deadline has passed.
    pub fn timed_out(self) -> Option<String> {
        let after = self.entry.timeout;
        self.answered(Err(PluginFault::TimedOut(after)), Instant::now())
    }
}

#[derive(Deserialize)]
struct ActionErrorObject<'a> {
    code: i64,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// Maps a plugin's answer to a result or an error.
fn interpret(
    entry: &ActionEntry,
    answer: Result<Answered, PluginFault>,
) -> Result<String, CallError> {
    let path = &*entry.path;
    match answer {
        Ok(Answered { body, serialized }) => {
            let result = String::from_utf8(body).map_err(|_| {
                RpcError::new(
                    ErrorCode::Internal,
                    format!("action '{path}' returned a result that is not UTF-8"),
                )
            })?;
            // Spliced into the reply as it is: one malformed result must
            // not corrupt the client's stream. One linear pass, no values
            // built; skipped for a result the plugin's serializer wrote
            // (`complete_serialized`, the authoring API's way).
            if !serialized && serde_json::from_str::<serde::de::IgnoredAny>(&result).is_err() {
                tracing::error!(
                    action = path,
                    "an action returned a result that is not JSON"
                );
                return Err(RpcError::new(
                    ErrorCode::Internal,
                    format!("action '{path}' returned a result that is not valid JSON"),
                )
                .into());
            }
            Ok(result)
        }
        Err(PluginFault::Refused(body)) => Err(action_error(path, body)),
        Err(PluginFault::Panicked(message)) => Err(RpcError::new(
            ErrorCode::ActionFailed,
            format!("action '{path}' failed: it panicked: {message}"),
        )
        .into()),
        Err(PluginFault::UnknownStatus { status, .. }) => Err(RpcError::new(
            ErrorCode::Internal,
            format!("action '{path}' ended with unknown status {status}"),
        )
        .into()),
        Err(PluginFault::NotAsked) => Err(RpcError::new(
            ErrorCode::Internal,
            format!("action '{path}' could not be started: the server is stopping"),
        )
        .into()),
        Err(PluginFault::TimedOut(after)) => Err(RpcError::new(
            ErrorCode::Timeout,
            format!(
                "action '{path}' did not answer within {} ms",
                after.as_millis()
            ),
        )
        .into()),
    }
}

/// Passes an action's error object through, unless it is malformed or uses
/// a code reserved for the runtime (then it becomes -32603, so clients can
/// trust the protocol's table).
fn action_error(path: &str, body: Vec<u8>) -> CallError {
    let Ok(object) = serde_json::from_slice::<ActionErrorObject<'_>>(&body) else {
        return RpcError::new(
            ErrorCode::Internal,
            format!("action '{path}' returned a malformed error"),
        )
        .into();
    };
    let reserved = (-32768..=-32000).contains(&object.code);
    if reserved
        && object.code != ErrorCode::InvalidParams.code()
        && object.code != ErrorCode::Internal.code()
    {
        return RpcError::new(
            ErrorCode::Internal,
            format!(
                "action '{path}' used the reserved error code {}: {}",
                object.code, object.message
            ),
        )
        .into();
    }
    // `from_slice` above only succeeds on valid UTF-8, so this never copies.
    CallError::Action(
        String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

#[cfg(test)]
pub(crate) mod tests;
