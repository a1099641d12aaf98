//! # action-api: write Switchboard actions in plain Rust
//!
//! The only crate a Switchboard plugin depends on. A plugin is a `cdylib`
//! crate that builds a [`Plugin`] (a name, a version and [`Action`]s, each a
//! typed Rust function) and exports it with [`export_plugin!`]:
//!
//! ```
//! use action_api::{Action, ActionError, Context, Plugin, export_plugin};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! fn add(_ctx: &Context<'_>, p: Add) -> Result<i64, ActionError> {
//!     p.a.checked_add(p.b).ok_or_else(|| ActionError::new(1, "overflow"))
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("math", env!("CARGO_PKG_VERSION")).action(Action::new("math/add", add))
//! }
//! export_plugin!(plugin);
//! ```
//!
//! The pieces:
//! - [`abi`]: the stable C ABI (`#[repr(C)]` types, the entry symbol). You
//!   need it only to write a plugin without this crate's help.
//! - [`Plugin`], [`Action`]: what a plugin offers, with per-action
//!   [`Policy`] (public or signed-in, scopes, inline, deadline).
//! - [`Handler`]: the action trait. An action may be a type of its own
//!   (its path, policy, typed params and output, and `&self` for state it
//!   carries); a plain function is sugar for the same trait.
//! - [`Context`]: the caller (connection id, user) and a [`Logger`] into
//!   the host's log.
//! - [`Reply`]: the handle a deferred action answers through, from any
//!   thread.
//! - [`ActionError`]: a typed refusal with code, message and data.
//! - [`Host`]: push to connections and users, publish to rooms, join or
//!   leave connections server-side, per-connection data, connection info,
//!   and calls to client methods.
//! - Connection hooks: [`Plugin::authenticate`] (judge a token or the
//!   handshake's cookies and headers: [`AuthRequest`], [`Authenticated`])
//!   and lifecycle hooks such as [`Plugin::on_connect`] ([`Event`]).
//!
//! ## What a plugin must know
//! A plugin links its own copy of every crate it uses, so the host's
//! statics are invisible to it: `tokio::spawn` finds no runtime and
//! `tracing`/`log` macros reach no subscriber. Log through [`Context`] or
//! [`Logger::global`]; answer long work through [`Action::deferred`].
//! Panics are caught at the boundary and reach the caller as -32005.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod abi;
mod action;
mod context;
mod error;
mod export;
mod handler;
mod hooks;
mod host_api;
mod host_ref;
mod raw_reply;
mod reply_buffer;

pub use action::{Action, Plugin, Reply};
pub use context::{Context, Logger};
pub use error::ActionError;
pub use handler::{Handler, Policy};
pub use hooks::{AuthRequest, Authenticated, Event, EventKind, JoinRequest};
pub use host_api::{ClientCallError, Host, HostError};

/// Re-exported so plugins need no direct serde_json dependency for
/// free-form params and results.
pub use serde_json::Value;

/// Re-exported for actions that pass JSON through without parsing it into
/// values: take `Box<RawValue>` as params or return it as a result, and
/// the bytes travel untouched (checked as JSON on the way in). An action
/// that only passes its params on is cheaper still as [`Action::raw`]:
/// nothing is checked, copied or serialized in the plugin.
pub use serde_json::value::RawValue;

#[doc(hidden)]
pub mod __private {
    pub use crate::export::entry;
}
