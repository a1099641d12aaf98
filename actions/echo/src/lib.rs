//! `echo`: diagnostics actions used by tests, benchmarks and people
//! checking that a server works.
//!
//! - `echo` (public): returns its params unchanged, byte for byte.
//! - `echo/sleep` `{ms}`: waits, then returns `{"slept": ms}`.
//! - `echo/spin` `{ms}`: keeps a CPU busy for `ms`, then returns `{"spun": ms}`.
//! - `echo/error`: refuses with code 1000 and the params as `data`.
//! - `echo/fail` `{code, message}`: refuses with exactly that code and message.
//! - `echo/panic`: panics (the caller gets -32005; the server carries on).
//! - `echo/whoami` (public): the caller's user and connection id.
//! - `echo/later` `{ms}`: a deferred reply, sent from another thread.
//! - `echo/count` (public): how many times it has been called in this
//!   build, counting this call; an action written as a type of its own
//!   (the action trait, [`Handler`]) that keeps its count in `&self`.

use action_api::{
    Action, ActionError, Context, Handler, Plugin, Policy, Reply, Value, export_plugin,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Params of the actions that take a duration.
#[derive(Deserialize)]
struct Millis {
    ms: u64,
}

/// The longest `echo/sleep` and `echo/spin` accept, so a typo cannot tie up
/// a thread for hours (the deadline answers the caller, but the thread runs on).
const MAX_MS: u64 = 60_000;

fn checked(p: Millis) -> Result<Duration, ActionError> {
    if p.ms > MAX_MS {
        return Err(ActionError::invalid_params(format!(
            "ms must be at most {MAX_MS}, got {}",
            p.ms
        )));
    }
    Ok(Duration::from_millis(p.ms))
}

/// Passes the params on as they came: never parsed, never re-encoded, not
/// even copied here (a raw action: the host makes the reply from them), so
/// the reply carries the caller's exact bytes.
fn echo<'p>(_ctx: &Context<'_>, params: &'p str) -> Result<Cow<'p, str>, ActionError> {
    Ok(Cow::Borrowed(params))
}

#[derive(Serialize)]
struct Slept {
    slept: u64,
}

fn sleep(_ctx: &Context<'_>, p: Millis) -> Result<Slept, ActionError> {
    let ms = p.ms;
    std::thread::sleep(checked(p)?);
    Ok(Slept { slept: ms })
}

#[derive(Serialize)]
struct Spun {
    spun: u64,
}

fn spin(_ctx: &Context<'_>, p: Millis) -> Result<Spun, ActionError> {
    let ms = p.ms;
    let until = Instant::now() + checked(p)?;
    let mut x: u64 = 0;
    while Instant::now() < until {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    Ok(Spun { spun: ms })
}

fn error(_ctx: &Context<'_>, params: Value) -> Result<Value, ActionError> {
    Err(ActionError::new(1000, "echo/error always refuses").with_data(params))
}

/// Params of `echo/fail`.
#[derive(Deserialize)]
struct Fail {
    code: i64,
    message: String,
}

fn fail(_ctx: &Context<'_>, p: Fail) -> Result<Value, ActionError> {
    Err(ActionError::new(p.code, p.message))
}

fn panic(_ctx: &Context<'_>, _params: Value) -> Result<Value, ActionError> {
    panic!("echo/panic was called")
}

#[derive(Serialize)]
struct WhoAmI {
    user: Option<String>,
    conn: u64,
}

fn whoami(ctx: &Context<'_>, _params: Value) -> Result<WhoAmI, ActionError> {
    Ok(WhoAmI {
        user: ctx.user().map(str::to_owned),
        conn: ctx.conn_id(),
    })
}

fn later(ctx: &Context<'_>, p: Millis, reply: Reply) {
    let ms = p.ms;
    match checked(p) {
        Ok(wait) => {
            ctx.debug(format_args!("echo/later answers in {ms} ms"));
            std::thread::spawn(move || {
                std::thread::sleep(wait);
                reply.send(Ok(Slept { slept: ms }));
            });
        }
        Err(err) => reply.send::<()>(Err(err)),
    }
}

/// `echo/count`: an action with state of its own.
struct Count {
    calls: AtomicU64,
}

impl Handler for Count {
    type Params = ();
    type Output = u64;

    fn path(&self) -> &str {
        "echo/count"
    }

    fn policy(&self) -> Policy {
        Policy::public().inline()
    }

    fn call(&self, _ctx: &Context<'_>, (): ()) -> Result<u64, ActionError> {
        Ok(self.calls.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

fn plugin() -> Plugin {
    Plugin::new("echo", env!("CARGO_PKG_VERSION"))
        .action(Action::from_handler(Count {
            calls: AtomicU64::new(0),
        }))
        .action(Action::raw("echo", echo).public().inline())
        .action(Action::new("echo/sleep", sleep).timeout(Duration::from_secs(2)))
        .action(Action::new("echo/spin", spin).timeout(Duration::from_secs(2)))
        .action(Action::new("echo/error", error))
        .action(Action::new("echo/fail", fail))
        .action(Action::new("echo/panic", panic))
        .action(Action::new("echo/whoami", whoami).public().inline())
        .action(
            Action::new(
                "echo/limited",
                |_: &Context<'_>, params: Value| -> Result<Value, ActionError> { Ok(params) },
            )
            .public()
            .inline()
            .rate_limit(5, 5),
        )
        .action(Action::deferred("echo/later", later).timeout(Duration::from_secs(2)))
}

export_plugin!(plugin);
