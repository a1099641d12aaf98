//! # Switchboard: a WebSocket action runtime
//!
//! Clients call actions by path over one WebSocket, in JSON-RPC 2.0; the
//! actions live in native plugins (`cdylib`s built against `action-api`)
//! that the server loads from a folder.
//!
//! The folders, in the order a call meets them:
//! - [`transport`]: the TCP listener and shutdown, optional TLS, the HTTP
//!   routes and the WebSocket upgrade with its admission checks (origins,
//!   connection bounds from [`limits`], [`anonymous`] slots) and token
//!   check ([`auth`]), and one task per connection that reads frames and
//!   writes replies in bursts.
//! - [`rpc`]: JSON-RPC envelopes parsed lazily and every frame the server
//!   sends, dispatch (built-ins inline; actions on the [`action_threads`]
//!   pool under deadlines), the error codes, and what one connection's
//!   calls know.
//! - [`plugins`]: loading plugin files (who may put them there, the
//!   preflight, the reload table), the ABI's host side, and the registry
//!   snapshot the call path reads without a lock; [`host_services`]: what
//!   plugins may do to the server (push, publish, join, call clients);
//!   [`lifecycle`]: connection events for plugins that listen.
//! - [`rooms`]: every connection's outbound queue (the hub), membership,
//!   fan-out, history and recovery, presence, within server-wide bounds;
//!   [`cluster`]: the same shared by several nodes through Redis.
//! - [`client`]: an async Rust client for a Switchboard server.
//! - [`server`]: [`server::Server`], a whole server built from its
//!   settings (what the binary runs, and what a program may embed);
//!   [`config`]: the settings; [`state`]: what connections share;
//!   [`status`]: the `/status` document; [`metrics`]: `/metrics`;
//!   [`api`]: `POST /api`, the HTTP API for backends;
//!   [`describe`]: `switchboard check`;
//!   [`rate`], [`sys`]: small shared pieces.
//!
//! The command line and the tools (`switchboard dev`, `switchboard bench`,
//! the floor server) live with the binaries in `src/bin/`, not here.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod action_threads;
pub mod anonymous;
pub mod api;
pub mod auth;
pub mod call_slots;
pub mod client;
pub mod cluster;
pub mod config;
pub mod describe;
pub mod host_services;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod plugins;
pub mod rate;
pub mod rooms;
pub mod rpc;
pub mod server;
pub mod state;
pub mod status;
pub mod sys;
pub mod transport;
