//! The transport: from a TCP connection to JSON-RPC frames and back.
//!
//! - [`listener`]: accepts TCP connections, serves HTTP/1.1 with upgrades
//!   (over [`tls`] when configured), and shuts down cleanly; [`pending`]:
//!   the bound on connections that have not upgraded yet;
//! - [`http`]: the routes (`/ws`, `/healthz`, `/status`) and the WebSocket
//!   upgrade, with its admission checks ([`handshake`]) and token check;
//!   [`response`]: the responses the server writes itself; [`assets`]:
//!   the JavaScript client and admin page it serves; [`admin`]: who may
//!   read `/status`; [`static_files`]: `static_dir`;
//!   [`token_endpoint`]: `POST /token`;
//!   [`forwarded`]:
//!   the client's address behind a trusted reverse proxy;
//! - [`read_ahead`]: socket reads in large gulps through a per-thread
//!   buffer, so an idle connection holds no read buffer;
//! - [`websocket`]: tungstenite on the async socket, for a connection
//!   served by one task;
//! - [`connection`]: one task per WebSocket: reads frames, hands them to
//!   [`crate::rpc`], writes replies and pushes in bursts.

pub mod admin;
pub mod assets;
pub mod connection;
pub mod forwarded;
pub mod handshake;
pub mod http;
pub mod listener;
pub mod pending;
pub mod read_ahead;
pub mod response;
pub mod static_files;
pub mod tls;
pub mod token_endpoint;
pub mod websocket;
