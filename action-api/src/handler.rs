//! [`Handler`]: the action trait. An action is a type that says its path
//! and its [`Policy`], takes typed params and returns a typed output; it
//! runs with `&self`, so it can carry its own state (a pool, a cache, a
//! counter). The function form, [`Action::new`](crate::Action::new), is sugar that
//! implements the same trait.
//!
//! ```
//! use action_api::{Action, ActionError, Context, Handler, Plugin, Policy};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Counts the greetings it gives.
//! struct Greet {
//!     greeted: AtomicU64,
//! }
//!
//! impl Handler for Greet {
//!     type Params = String;
//!     type Output = String;
//!
//!     fn path(&self) -> &str {
//!         "hello/greet"
//!     }
//!
//!     fn policy(&self) -> Policy {
//!         Policy::signed_in().inline()
//!     }
//!
//!     fn call(&self, _ctx: &Context<'_>, name: String) -> Result<String, ActionError> {
//!         let n = self.greeted.fetch_add(1, Ordering::Relaxed) + 1;
//!         Ok(format!("Hello, {name}! (greeting number {n})"))
//!     }
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("hello", env!("CARGO_PKG_VERSION"))
//!         .action(Action::from_handler(Greet { greeted: AtomicU64::new(0) }))
//! }
//! # let _ = plugin();
//! ```

use crate::context::Context;
use crate::error::ActionError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;

/// Who may call an action and how the host runs it. The default:
/// signed-in callers, run on the server's action threads under its default
/// deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub(crate) public: bool,
    pub(crate) inline: bool,
    /// Required scopes, space-separated (as the descriptor carries them).
    pub(crate) scopes: String,
    pub(crate) timeout: Option<Duration>,
    /// Calls per second and burst, per connection.
    pub(crate) rate_limit: Option<(u32, u32)>,
}

impl Policy {
    /// Signed-in callers only (the default).
    pub fn signed_in() -> Policy {
        Policy::default()
    }

    /// Anyone, signed in or not.
    pub fn public() -> Policy {
        Policy {
            public: true,
            ..Policy::default()
        }
    }

    /// Runs on the connection's own thread: see [`Action::inline`](crate::Action::inline).
    pub fn inline(mut self) -> Policy {
        self.inline = true;
        self
    }

    /// Requires the caller's token to carry every one of `scopes`: see
    /// [`Action::require_scopes`](crate::Action::require_scopes).
    pub fn require_scopes<S: AsRef<str>>(mut self, scopes: impl IntoIterator<Item = S>) -> Policy {
        for scope in scopes {
            let scope = scope.as_ref().trim();
            if !scope.is_empty() {
                if !self.scopes.is_empty() {
                    self.scopes.push(' ');
                }
                self.scopes.push_str(scope);
            }
        }
        self
    }

    /// Sets the deadline: see [`Action::timeout`](crate::Action::timeout).
    pub fn timeout(mut self, deadline: Duration) -> Policy {
        self.timeout = Some(deadline);
        self
    }

    /// Limits how often one connection may call the action: see
    /// [`Action::rate_limit`](crate::Action::rate_limit).
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Policy {
        self.rate_limit = (per_second > 0).then_some((per_second, burst.max(1)));
        self
    }
}

/// The action trait: an action as a type of its own.
///
/// Params that do not deserialize into [`Handler::Params`] are refused
/// with -32602 before [`Handler::call`] runs; a request without params
/// deserializes from `null` (so `()` or `Option<T>` accept it). The host
/// runs `call` on threads where blocking is fine (unless the policy says
/// inline), under a deadline, possibly on several threads at once: keep
/// shared state in types that are `Sync` (atomics, `Mutex`, a pool).
pub trait Handler: Send + Sync + 'static {
    /// The params, from the request's JSON.
    type Params: DeserializeOwned;
    /// The result, serialized into the reply.
    type Output: Serialize;

    /// The method path clients call (e.g. `"shop/order"`).
    fn path(&self) -> &str;

    /// Who may call it and how it runs. Default: signed-in callers, on
    /// the action threads, under the server's default deadline.
    fn policy(&self) -> Policy {
        Policy::default()
    }

    /// Runs one call.
    fn call(&self, ctx: &Context<'_>, params: Self::Params) -> Result<Self::Output, ActionError>;
}

/// A function and its path: the function form of an action, as a
/// [`Handler`] (what [`Action::new`](crate::Action::new) builds).
pub(crate) struct FnHandler<P, R, F> {
    path: String,
    function: F,
    _types: PhantomData<fn(P) -> R>,
}

impl<P, R, F> FnHandler<P, R, F> {
    pub(crate) fn new(path: String, function: F) -> Self {
        FnHandler {
            path,
            function,
            _types: PhantomData,
        }
    }
}

impl<P, R, F> Handler for FnHandler<P, R, F>
where
    P: DeserializeOwned + 'static,
    R: Serialize + 'static,
    F: Fn(&Context<'_>, P) -> Result<R, ActionError> + Send + Sync + 'static,
{
    type Params = P;
    type Output = R;

    fn path(&self) -> &str {
        &self.path
    }

    fn call(&self, ctx: &Context<'_>, params: P) -> Result<R, ActionError> {
        (self.function)(ctx, params)
    }
}
