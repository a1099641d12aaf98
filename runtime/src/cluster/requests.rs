//! Asking another node to act on one of its connections: what a plugin
//! may do to any connection (read its info or data, set its data, join
//! it to a room or take it out, call it and wait for its answer) works
//! whichever node holds the connection.
//!
//! The asking node publishes `q <id> <origin> <conn> <request>` on the
//! holding node's channel; that node does it as it would for a plugin of
//! its own and answers `r <id> <answer>` on the asking node's channel.
//! Requests and answers are JSON ([`NodeRequest`], [`NodeAnswer`]).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// What one node asks another to do for one of its connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum NodeRequest {
    /// The connection's info (user, connected at, address, rooms).
    ConnInfo,
    /// One value of the connection's data.
    ConnData {
        /// Its key.
        key: String,
    },
    /// Sets (or, with no value, removes) one value of its data.
    SetData {
        /// Its key.
        key: String,
        /// The JSON value.
        value: Option<String>,
    },
    /// Joins it to `room` (or takes it out).
    Membership {
        /// The room.
        room: String,
        /// Join, or leave.
        join: bool,
    },
    /// Closes it (the HTTP API's `disconnect`).
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Calls `method` on the client and waits for its answer.
    CallClient {
        /// The client's method.
        method: String,
        /// Its params, JSON.
        params: String,
        /// How long to wait, in milliseconds.
        timeout_ms: u64,
    },
}

/// The answer to a [`NodeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum NodeAnswer {
    /// Text (info, data), or none (no such connection or key).
    Text(Option<String>),
    /// Done, or not (no such connection, or refused).
    Done(bool),
    /// The client answered: `Ok(result)` or `Err(error object)`, as JSON.
    Answered(Result<String, String>),
    /// The client did not answer in time.
    TimedOut,
    /// No such connection, or the other node could not be reached.
    Gone,
}

/// What a node does for requests about its own connections (the
/// server's plugin services; blocking, so it runs on a blocking thread).
pub trait NodeRequestHandler: Send + Sync {
    /// Does `request` for this node's connection `conn_id`.
    fn handle(&self, conn_id: u64, request: NodeRequest) -> NodeAnswer;

    /// Carries out an order another node gave every node (for this
    /// node's own connections).
    fn obey(&self, order: super::Order);
}

/// Requests this node sent and waits on, by id.
#[derive(Debug, Default)]
pub(super) struct Pending {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<NodeAnswer>>>,
}

impl Pending {
    /// A fresh request id and the receiver of its answer.
    pub(super) fn open(&self) -> (u64, oneshot::Receiver<NodeAnswer>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (id, rx)
    }

    /// Hands `answer` to request `id`, if it still waits.
    pub(super) fn answer(&self, id: u64, answer: NodeAnswer) {
        if let Some(tx) = self.lock().remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// Forgets request `id` (timed out).
    pub(super) fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<NodeAnswer>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `q`: a request to the node holding `conn`.
pub(super) fn request(id: u64, origin: u64, conn: u64, request: &NodeRequest) -> String {
    let body = serde_json::to_string(request).unwrap_or_default();
    format!("q {id} {origin} {conn} {body}")
}

/// `r`: the answer to request `id`.
pub(super) fn answer(id: u64, answer: &NodeAnswer) -> String {
    let body = serde_json::to_string(answer).unwrap_or_default();
    format!("r {id} {body}")
}

/// A request or an answer heard on this node's channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard {
    /// Do `request` for `conn` and answer `origin`'s request `id`.
    Request {
        /// The request's id at its origin.
        id: u64,
        /// The asking node.
        origin: u64,
        /// The connection.
        conn: u64,
        /// What to do.
        request: NodeRequest,
    },
    /// The answer to this node's request `id`.
    Answer {
        /// The request's id.
        id: u64,
        /// The answer.
        answer: NodeAnswer,
    },
}

/// Reads a `q` or `r` payload; `None` for anything else.
pub(super) fn parse(payload: &str) -> Option<Heard> {
    let (kind, rest) = payload.split_once(' ')?;
    match kind {
        "q" => {
            let mut parts = rest.splitn(4, ' ');
            let id = parts.next()?.parse().ok()?;
            let origin = parts.next()?.parse().ok()?;
            let conn = parts.next()?.parse().ok()?;
            let request = serde_json::from_str(parts.next()?).ok()?;
            Some(Heard::Request {
                id,
                origin,
                conn,
                request,
            })
        }
        "r" => {
            let (id, body) = rest.split_once(' ')?;
            Some(Heard::Answer {
                id: id.parse().ok()?,
                answer: serde_json::from_str(body).ok()?,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_and_answers_read_back() {
        let asked = NodeRequest::CallClient {
            method: "confirm".into(),
            params: r#"{"q": "ok?"}"#.into(),
            timeout_ms: 500,
        };
        assert_eq!(
            parse(&request(7, 3, 99, &asked)),
            Some(Heard::Request {
                id: 7,
                origin: 3,
                conn: 99,
                request: asked
            })
        );
        for given in [
            NodeAnswer::Text(Some("{\"a\": 1}".into())),
            NodeAnswer::Done(true),
            NodeAnswer::Answered(Err("{}".into())),
            NodeAnswer::TimedOut,
            NodeAnswer::Gone,
        ] {
            assert_eq!(
                parse(&answer(1, &given)),
                Some(Heard::Answer {
                    id: 1,
                    answer: given
                })
            );
        }
        assert_eq!(parse("c 1 {}"), None);
    }
}
