//! `auth-probe`: the plugin the security tests watch.
//!
//! - An `authenticate` hook: token `key-<user>` signs `<user>` in with
//!   scope `probe:read` and data `{"via": "api-key"}`; `key-revoked` is
//!   refused with "this API key was revoked"; with no token, a cookie
//!   `session=<user>` signs `<user>` in (data `{"via": "cookie"}`).
//! - Lifecycle hooks that record every event, read back by `probe/events`.
//! - Actions that count the calls that reach them, read back by
//!   `probe/count`, so a test can prove a refused call never arrived.
//! - `probe/send {conn, event, data}`: a push to any connection (what a
//!   plugin's `Host::send` does, for the cluster tests).

use action_api::{
    Action, ActionError, Authenticated, Context, Event, EventKind, Plugin, Value, export_plugin,
};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

static GUARDED: AtomicU64 = AtomicU64::new(0);
static SCOPED: AtomicU64 = AtomicU64::new(0);
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Serialize)]
struct Counts {
    guarded: u64,
    scoped: u64,
}

fn count(_ctx: &Context<'_>, _p: Value) -> Result<Counts, ActionError> {
    Ok(Counts {
        guarded: GUARDED.load(Ordering::SeqCst),
        scoped: SCOPED.load(Ordering::SeqCst),
    })
}

fn guarded(ctx: &Context<'_>, _p: Value) -> Result<Value, ActionError> {
    GUARDED.fetch_add(1, Ordering::SeqCst);
    Ok(serde_json::json!({"user": ctx.user()}))
}

fn scoped(ctx: &Context<'_>, _p: Value) -> Result<Value, ActionError> {
    SCOPED.fetch_add(1, Ordering::SeqCst);
    let data: Option<Value> = ctx
        .connection_data()
        .and_then(|d| serde_json::from_str(d).ok());
    Ok(serde_json::json!({
        "user": ctx.user(),
        "scopes": ctx.scopes().collect::<Vec<_>>(),
        "data": data,
    }))
}

#[derive(serde::Deserialize)]
struct SendParams {
    conn: u64,
    event: String,
    data: Value,
}

fn send(ctx: &Context<'_>, p: SendParams) -> Result<bool, ActionError> {
    Ok(ctx.host().send(p.conn, &p.event, p.data)?)
}

fn events(_ctx: &Context<'_>, _p: Value) -> Result<Vec<String>, ActionError> {
    Ok(EVENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone())
}

fn record(event: &Event<'_>) {
    let what = match event.kind {
        EventKind::Connect => "connect",
        EventKind::AuthSuccess => "auth_success",
        EventKind::AuthFailure => "auth_failure",
        EventKind::Disconnect => "disconnect",
        EventKind::Error => "error",
    };
    let line = format!(
        "{what} {} {} {}",
        event.conn_id,
        event.user.unwrap_or("-"),
        event.detail
    );
    EVENTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(line);
}

fn authenticate(req: &action_api::AuthRequest<'_>) -> Result<Authenticated, String> {
    match req.token() {
        Some("key-revoked") => Err("this API key was revoked".to_owned()),
        Some(token) => match token.strip_prefix("key-") {
            Some(user) if !user.is_empty() => Ok(Authenticated::user(user)
                .with_scopes(["probe:read"])
                .with_data(serde_json::json!({"via": "api-key"}))),
            _ => Err("not an API key".to_owned()),
        },
        None => match req.cookie("session") {
            Some(user) => {
                Ok(Authenticated::user(user).with_data(serde_json::json!({"via": "cookie"})))
            }
            None => Err("no credentials".to_owned()),
        },
    }
}

fn plugin() -> Plugin {
    Plugin::new("auth-probe", env!("CARGO_PKG_VERSION"))
        .action(Action::new("probe/count", count).public())
        .action(Action::new("probe/events", events).public())
        .action(Action::new("probe/guarded", guarded))
        .action(Action::new("probe/scoped", scoped).require_scopes(["probe:read"]))
        .action(Action::new("probe/send", send))
        .authenticate(authenticate)
        .on_connect(record)
        .on_auth_success(record)
        .on_auth_failure(record)
        .on_disconnect(record)
        .on_error(record)
}

export_plugin!(plugin);
