//! # Switchboard: a WebSocket action runtime
//!
//! Clients call actions by path over one WebSocket, in JSON-RPC 2.0; the
//! actions live in native plugins (`cdylib`s built against `action-api`)
//! that the server loads from a folder.
//!
//! The components, in the order a call meets them:
//! - [`server`]: [`server::Server`], a whole server built from its
//!   settings (what the binary runs, and what a program may embed), the
//!   TCP listener and shutdown; [`tls`]: optional TLS
//!   (`https://`, `wss://`) from PEM files; [`http`]: the routes
//!   (`/ws`, `/healthz`, `/status`) and the WebSocket upgrade with its
//!   admission checks ([`handshake`]: origins, connection bounds from
//!   [`limits`], [`anonymous`] slots) and token check ([`auth`]).
//! - [`connection`]: one task per connection: reads frames, writes
//!   replies in bursts.
//! - [`protocol`]: JSON-RPC envelopes, parsed lazily, replies spliced.
//! - [`dispatch`]: built-ins ([`builtins`]) inline; actions on the
//!   [`action_threads`] pool under deadlines, errors mapped to codes
//!   ([`rpc_error`]).
//! - [`plugins`]: loading plugin files, the ABI's host side, and the
//!   registry snapshot the call path reads without a lock.
//! - [`lifecycle`]: connection events for plugins that listen.
//! - [`hub`]: every connection's outbound queue, for pushes; [`rooms`]:
//!   membership, fan-out, history and recovery, presence.
//! - [`config`]: settings from file, environment and flags; [`state`]: what
//!   connections share; [`session`]: what one connection knows;
//!   [`status`]: the `/status` document; [`describe`]: `switchboard check`.
//!
//! The command line and the tools (`switchboard dev`, `switchboard bench`,
//! the floor server) live with the binaries in `src/bin/`, not here.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod action_threads;
pub mod anonymous;
pub mod auth;
pub mod builtins;
pub mod config;
pub mod connection;
pub mod describe;
pub mod dispatch;
pub mod handshake;
pub mod host_services;
pub mod http;
pub mod hub;
pub mod lifecycle;
pub mod limits;
pub mod plugins;
pub mod protocol;
pub mod rate;
pub mod response;
pub mod room_calls;
pub mod rooms;
pub mod rpc_error;
pub mod server;
pub mod session;
pub mod state;
pub mod status;
pub mod sys;
pub mod tls;
