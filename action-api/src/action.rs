//! [`Plugin`] and [`Action`]: how an author describes what a plugin offers,
//! and [`Reply`], the handle a deferred action answers through.

use crate::context::Context;
use crate::error::ActionError;
use crate::handler::{FnHandler, Handler, Policy};
use crate::hooks::{AuthRequest, Authenticated, Event, EventKind, JoinRequest};
use crate::raw_reply::RawReply;
use crate::reply_buffer::ReplyBuffer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::time::Duration;

/// A type-erased action body: gets the raw params and the reply slot. A
/// synchronous action fills the slot before it returns; a deferred one
/// takes the [`Reply`] out of it and answers later.
pub(crate) type ErasedHandler = Box<dyn Fn(&Context<'_>, &str, &mut Option<Reply>) + Send + Sync>;

/// One action as the plugin exports it: a method path, its [`Policy`], and
/// what runs it (a [`Handler`], or a function: [`Action::new`]).
pub struct Action {
    pub(crate) path: String,
    pub(crate) policy: Policy,
    pub(crate) handler: ErasedHandler,
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn parse_params<P: DeserializeOwned>(raw: &str) -> Result<P, ActionError> {
    serde_json::from_str(raw)
        .map_err(|e| ActionError::invalid_params(format!("invalid params: {e}")))
}

impl Action {
    /// A synchronous action: `handler` gets typed params and returns a
    /// typed result or an [`ActionError`]. Params that do not deserialize
    /// into `P` are refused with -32602 before `handler` runs. A request
    /// without params deserializes from `null` (so `()` or `Option<T>`
    /// accept it).
    ///
    /// The host runs actions on threads where blocking is fine, under a
    /// deadline (see [`Action::timeout`]).
    ///
    /// Sugar for a [`Handler`] made of `path` and `handler`.
    pub fn new<P, R, F>(path: impl Into<String>, handler: F) -> Action
    where
        P: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(&Context<'_>, P) -> Result<R, ActionError> + Send + Sync + 'static,
    {
        Action::from_handler(FnHandler::new(path.into(), handler))
    }

    /// An action of a type that implements the action trait, [`Handler`]:
    /// its path and policy come from it, and every call runs its
    /// [`Handler::call`] with `&self`. The builder methods below may still
    /// change the policy.
    pub fn from_handler<H: Handler>(handler: H) -> Action {
        let path = handler.path().to_owned();
        let policy = handler.policy();
        let erased: ErasedHandler = Box::new(move |ctx, raw, slot| {
            let result =
                parse_params::<H::Params>(raw).and_then(|params| handler.call(ctx, params));
            if let Some(reply) = slot.take() {
                reply.send(result);
            }
        });
        Action {
            path,
            policy,
            handler: erased,
        }
    }

    /// A synchronous action on JSON as text, for an action that passes
    /// JSON on (stores it, forwards it, echoes it) without looking into
    /// it. `handler` gets the request's params as the client sent them
    /// (one JSON value, `null` without params; the host has checked that
    /// it is JSON) and returns its result as JSON text, which goes into
    /// the reply as it is: nothing is parsed or serialized on the way, in
    /// the plugin or the host.
    ///
    /// The params themselves, returned as `Cow::Borrowed(params)`, pass
    /// on without being checked again (the host checked them) or copied in
    /// the plugin. Any other result is checked by the host in one linear
    /// pass: one that is not JSON reaches the caller as -32603, and the
    /// server's log. To build a result from values, use [`Action::new`].
    ///
    /// ```
    /// use action_api::{Action, ActionError, Context};
    /// use std::borrow::Cow;
    ///
    /// /// Answers with its params, byte for byte.
    /// fn echo<'p>(_ctx: &Context<'_>, params: &'p str) -> Result<Cow<'p, str>, ActionError> {
    ///     Ok(Cow::Borrowed(params))
    /// }
    /// let _ = Action::raw("demo/echo", echo).public().inline();
    /// ```
    pub fn raw<F>(path: impl Into<String>, handler: F) -> Action
    where
        F: for<'p> Fn(&Context<'_>, &'p str) -> Result<Cow<'p, str>, ActionError>
            + Send
            + Sync
            + 'static,
    {
        let erased: ErasedHandler = Box::new(move |ctx, params, slot| {
            let result = handler(ctx, params);
            if let Some(reply) = slot.take() {
                reply.send_raw(params, result);
            }
        });
        Action::with_handler(path.into(), erased)
    }

    /// A deferred action: `handler` gets typed params and a [`Reply`] it
    /// may complete later, from any thread. Use it when the answer comes
    /// from elsewhere (another thread, an I/O completion). Dropping the
    /// `Reply` unanswered sends the caller an internal error.
    pub fn deferred<P, F>(path: impl Into<String>, handler: F) -> Action
    where
        P: DeserializeOwned,
        F: Fn(&Context<'_>, P, Reply) + Send + Sync + 'static,
    {
        let erased: ErasedHandler = Box::new(move |ctx, raw, slot| match parse_params::<P>(raw) {
            Ok(params) => {
                if let Some(reply) = slot.take() {
                    handler(ctx, params, reply);
                }
            }
            Err(err) => {
                if let Some(reply) = slot.take() {
                    reply.send::<()>(Err(err));
                }
            }
        });
        Action::with_handler(path.into(), erased)
    }

    fn with_handler(path: String, handler: ErasedHandler) -> Action {
        Action {
            path,
            policy: Policy::default(),
            handler,
        }
    }

    /// Lets connections that have not signed in call this action.
    /// By default an action needs a signed-in caller.
    pub fn public(mut self) -> Action {
        self.policy.public = true;
        self
    }

    /// Promises that this action never blocks (no I/O, no locks held long,
    /// no sleeping) and finishes in microseconds, so the server may run it
    /// on the connection's own thread, the fastest path. Such an action
    /// gets no deadline: one that breaks the promise stalls every
    /// connection on that thread. Leave it off when in doubt.
    pub fn inline(mut self) -> Action {
        self.policy = self.policy.inline();
        self
    }

    /// Requires the caller's token to carry every one of `scopes` (its
    /// `scopes` claim); a signed-in caller without them gets -32002, and
    /// `rpc.actions` does not list the action for it.
    pub fn require_scopes<S: AsRef<str>>(mut self, scopes: impl IntoIterator<Item = S>) -> Action {
        self.policy = self.policy.require_scopes(scopes);
        self
    }

    /// Limits how often one connection may call this action: `per_second`
    /// calls a second on average, `burst` at once above that. A call over
    /// the limit is refused with -32004 before it reaches the action (and
    /// counts towards the server's `rate_refusals_before_close`). For an
    /// action that is costly (sends mail, calls another service) or a
    /// target for guessing (a login). 0 turns it off (the default).
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Action {
        self.policy = self.policy.rate_limit(per_second, burst);
        self
    }

    /// Sets this action's deadline; past it the caller gets -32003. The
    /// default is the server's `call_timeout`.
    pub fn timeout(mut self, deadline: Duration) -> Action {
        self.policy = self.policy.timeout(deadline);
        self
    }
}

/// The answer handle of one call. Send it a result exactly once, from any
/// thread; dropping it unanswered answers the caller with -32603.
#[derive(Debug)]
pub struct Reply {
    raw: Option<RawReply>,
}

impl Reply {
    pub(crate) fn new(raw: RawReply) -> Reply {
        Reply { raw: Some(raw) }
    }

    /// Answers with JSON text as it is (see [`Action::raw`]): `params`
    /// themselves need no check, anything else is for the host to check.
    pub(crate) fn send_raw(mut self, params: &str, result: Result<Cow<'_, str>, ActionError>) {
        let Some(raw) = self.raw.take() else { return };
        match result {
            // The very slice the host handed over (address and length).
            Ok(json) if std::ptr::eq(json.as_ref(), params) => raw.ok(json.as_bytes()),
            Ok(json) => raw.ok_unchecked(json.as_bytes()),
            Err(err) => raw.error(&err),
        }
    }

    /// Takes the raw handle out, leaving nothing for `Drop` to answer.
    pub(crate) fn into_raw(mut self) -> Option<RawReply> {
        self.raw.take()
    }

    /// Answers the call with a result or an error.
    pub fn send<R: Serialize>(mut self, result: Result<R, ActionError>) {
        // Serialize before taking the handle: if `Serialize` panics, the
        // handle is still here and `Drop` answers the caller. A short
        // result is written on the stack (the host copies it).
        let mut json = ReplyBuffer::new();
        let encoded = result.and_then(|value| {
            serde_json::to_writer(&mut json, &value).map_err(|e| {
                ActionError::internal(format!("the action's result could not be serialized: {e}"))
            })
        });
        let Some(raw) = self.raw.take() else { return };
        match encoded {
            Ok(()) => raw.ok(json.as_bytes()),
            Err(err) => raw.error(&err),
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(raw) = self.raw.take() {
            if std::thread::panicking() {
                raw.panicked("the action panicked after taking its reply");
            } else {
                raw.error(&ActionError::internal(
                    "the action dropped its reply without answering",
                ));
            }
        }
    }
}

/// A plugin: its name, version, actions and optional shutdown hook. Build
/// one in a function and hand that function to [`export_plugin!`](crate::export_plugin).
pub struct Plugin {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) actions: Vec<Action>,
    pub(crate) on_shutdown: Option<Box<dyn Fn() + Send + Sync>>,
    pub(crate) authenticate: Option<AuthHook>,
    pub(crate) event_hooks: Vec<(EventKind, EventHook)>,
    pub(crate) join_hooks: Vec<(String, JoinHook)>,
    /// The join hooks' patterns, space-separated (as the descriptor has them).
    pub(crate) join_patterns: String,
    pub(crate) save_state: Option<SaveHook>,
    pub(crate) restore_state: Option<RestoreHook>,
}

/// Saves a plugin's state for its successor.
pub(crate) type SaveHook = Box<dyn Fn() -> Vec<u8> + Send + Sync>;
/// Takes the state a predecessor saved.
pub(crate) type RestoreHook = Box<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// A room-join hook.
pub(crate) type JoinHook = Box<dyn Fn(&JoinRequest<'_>) -> Result<(), String> + Send + Sync>;

/// An authentication hook.
pub(crate) type AuthHook =
    Box<dyn Fn(&AuthRequest<'_>) -> Result<Authenticated, String> + Send + Sync>;
/// A lifecycle hook.
pub(crate) type EventHook = Box<dyn Fn(&Event<'_>) + Send + Sync>;

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// A plugin with no actions yet. Pass `env!("CARGO_PKG_VERSION")` as
    /// the version so `/status` and `rpc.actions` show what is deployed.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Plugin {
        Plugin {
            name: name.into(),
            version: version.into(),
            actions: Vec::new(),
            on_shutdown: None,
            authenticate: None,
            event_hooks: Vec::new(),
            join_hooks: Vec::new(),
            join_patterns: String::new(),
            save_state: None,
            restore_state: None,
        }
    }

    /// Adds an action.
    pub fn action(mut self, action: Action) -> Plugin {
        self.actions.push(action);
        self
    }

    /// Makes this plugin an authenticator: the server's `auth_chain` step
    /// `plugin` calls `hook` with the token (if any) and the handshake;
    /// `Ok` signs the connection in, `Err(reason)` refuses it (the reason
    /// reaches the client). Runs on a thread that may block.
    pub fn authenticate(
        mut self,
        hook: impl Fn(&AuthRequest<'_>) -> Result<Authenticated, String> + Send + Sync + 'static,
    ) -> Plugin {
        self.authenticate = Some(Box::new(hook));
        self
    }

    /// Decides who may join the rooms matching `pattern` (`*` any run of
    /// characters, `{sub}` the caller's user): `Err(reason)` refuses the
    /// join with -32002 and the reason. Called on a thread that may block,
    /// after the room's own policy allowed the join.
    pub fn on_join(
        mut self,
        pattern: impl Into<String>,
        hook: impl Fn(&JoinRequest<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Plugin {
        let pattern: String = pattern.into().split_whitespace().collect();
        if !self.join_patterns.is_empty() {
            self.join_patterns.push(' ');
        }
        self.join_patterns.push_str(&pattern);
        self.join_hooks.push((pattern, Box::new(hook)));
        self
    }

    /// Calls `hook` for every lifecycle event of `kind`, on a thread of
    /// the plugin's own, in the order events happen.
    pub fn on_event(
        mut self,
        kind: EventKind,
        hook: impl Fn(&Event<'_>) + Send + Sync + 'static,
    ) -> Plugin {
        self.event_hooks.push((kind, Box::new(hook)));
        self
    }

    /// Calls `hook` when a connection opens.
    pub fn on_connect(self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Plugin {
        self.on_event(EventKind::Connect, hook)
    }

    /// Calls `hook` when a connection signs in.
    pub fn on_auth_success(self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Plugin {
        self.on_event(EventKind::AuthSuccess, hook)
    }

    /// Calls `hook` when a token or credential is refused.
    pub fn on_auth_failure(self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Plugin {
        self.on_event(EventKind::AuthFailure, hook)
    }

    /// Calls `hook` when a connection closes (`detail.reason` says why).
    pub fn on_disconnect(self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Plugin {
        self.on_event(EventKind::Disconnect, hook)
    }

    /// Calls `hook` when something fails on a connection.
    pub fn on_error(self, hook: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Plugin {
        self.on_event(EventKind::Error, hook)
    }

    /// Hands this plugin's in-memory state to the next build of it on a hot
    /// reload, so a rebuild loses nothing.
    ///
    /// `save` runs on the serving generation just before the swap; its
    /// bytes are copied into the server's memory and given to the new
    /// generation's `restore` before that generation serves any call. If
    /// `restore` returns `Err(reason)`, the new generation is refused and
    /// the old one keeps serving (the reason is on `/status`).
    ///
    /// The bytes are yours to define: put a format version in them (for
    /// instance a JSON object with a `"v"` field) and refuse, or migrate,
    /// versions you do not know. A plugin loaded at server start, or after
    /// a predecessor without `keep_state`, gets no `restore` call. Calls
    /// still running on the old generation after `save` may change its
    /// state; those changes are not carried over.
    pub fn keep_state(
        mut self,
        save: impl Fn() -> Vec<u8> + Send + Sync + 'static,
        restore: impl Fn(&[u8]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Plugin {
        self.save_state = Some(Box::new(save));
        self.restore_state = Some(Box::new(restore));
        self
    }

    /// Registers a function the host calls once when it stops using the
    /// plugin (shutdown or retirement): stop threads, flush, free ports.
    pub fn on_shutdown(mut self, hook: impl Fn() + Send + Sync + 'static) -> Plugin {
        self.on_shutdown = Some(Box::new(hook));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{ABI_VERSION, ByteView, HostTable};
    use crate::context::Logger;
    use std::ffi::c_void;
    use std::sync::Mutex;

    /// What the host was told for one handle: whether through
    /// `complete_serialized` (no check needed), the status, the body.
    type Completed = (usize, bool, u32, Vec<u8>);
    static COMPLETED: Mutex<Vec<Completed>> = Mutex::new(Vec::new());

    unsafe extern "C" fn log(_: *const c_void, _: u32, _: u64, _: ByteView) {}
    unsafe extern "C" fn complete(handle: *mut c_void, status: u32, body: ByteView) {
        // SAFETY: the body lives for this call.
        let body = unsafe { body.as_slice() }.to_vec();
        if let Ok(mut done) = COMPLETED.lock() {
            done.push((handle as usize, false, status, body));
        }
    }
    unsafe extern "C" fn complete_serialized(handle: *mut c_void, body: ByteView) {
        // SAFETY: the body lives for this call.
        let body = unsafe { body.as_slice() }.to_vec();
        if let Ok(mut done) = COMPLETED.lock() {
            done.push((handle as usize, true, crate::abi::status::OK, body));
        }
    }

    static HOST: HostTable = HostTable {
        abi_version: ABI_VERSION,
        size: std::mem::size_of::<HostTable>() as u32,
        host_ctx: std::ptr::null(),
        log,
        complete,
        send_to_conn: None,
        send_to_user: None,
        broadcast: None,
        publish: None,
        set_membership: None,
        query: None,
        set_conn_data: None,
        call_client: None,
        broadcast_signed_in: None,
        complete_serialized: Some(complete_serialized),
    };

    /// Runs `action` on `params` with reply handle `handle`; what the host
    /// was told.
    fn run(action: &Action, params: &str, handle: usize) -> Option<(bool, u32, Vec<u8>)> {
        let ctx = Context {
            conn_id: 1,
            user: None,
            scopes: "",
            conn_data: None,
            logger: Logger::new(&HOST, 1),
        };
        let raw = RawReply {
            host: &HOST,
            handle: handle as *mut c_void,
        };
        (action.handler)(&ctx, params, &mut Some(Reply::new(raw)));
        let done = COMPLETED.lock().ok()?;
        done.iter()
            .find(|(h, ..)| *h == handle)
            .map(|(_, serialized, status, body)| (*serialized, *status, body.clone()))
    }

    fn echo<'p>(_ctx: &Context<'_>, params: &'p str) -> Result<Cow<'p, str>, ActionError> {
        Ok(Cow::Borrowed(params))
    }

    fn first_byte<'p>(_ctx: &Context<'_>, params: &'p str) -> Result<Cow<'p, str>, ActionError> {
        Ok(Cow::Borrowed(&params[..1]))
    }

    fn made<'p>(_ctx: &Context<'_>, params: &'p str) -> Result<Cow<'p, str>, ActionError> {
        if params == "null" {
            return Err(ActionError::new(7, "no params"));
        }
        Ok(Cow::Owned(format!("[{params}]")))
    }

    #[test]
    fn a_raw_action_passes_its_params_on_unchecked_and_anything_else_for_checking() {
        let ok = crate::abi::status::OK;
        let params = r#"{"a": [1, 2]}"#;
        assert_eq!(
            run(&Action::raw("t/echo", echo), params, 1),
            Some((true, ok, params.as_bytes().to_vec())),
            "the params themselves need no check"
        );
        // A slice of the params is not known to be JSON: the host checks.
        assert_eq!(
            run(&Action::raw("t/first", first_byte), params, 2),
            Some((false, ok, b"{".to_vec()))
        );
        assert_eq!(
            run(&Action::raw("t/made", made), "1", 3),
            Some((false, ok, b"[1]".to_vec()))
        );
        let refused = run(&Action::raw("t/made", made), "null", 4);
        assert!(
            matches!(&refused, Some((false, status, body))
                if *status == crate::abi::status::ACTION_ERROR
                    && String::from_utf8_lossy(body).contains("no params")),
            "{refused:?}"
        );
    }
}
