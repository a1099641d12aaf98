//! The protocol: JSON-RPC 2.0 as Switchboard speaks it.
//!
//! - [`protocol`]: envelopes, parsed lazily, and every frame the server
//!   sends (replies spliced, pushes, the server-call id convention);
//! - [`dispatch`]: from a parsed request to its reply: built-ins
//!   ([`builtins`], the room ones in [`room_calls`]) inline, actions on the
//!   action pool under deadlines; on a cluster broker, room calls run
//!   beside the others, one at a time in their order ([`lane`]);
//! - [`error`]: the protocol's error codes and the errors a client sees;
//! - [`session`]: what one connection's calls know (who signed in, limits);
//! - [`rates`]: the rate limits on what clients send.

pub mod builtins;
pub mod dispatch;
pub mod error;
pub mod lane;
pub mod protocol;
pub mod rates;
pub mod room_calls;
pub mod session;
