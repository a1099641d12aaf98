//! [`Client`]: an async Rust client for a Switchboard server (tokio), with
//! the JavaScript client's features: calls with timeouts, notifications,
//! rooms with recovery across reconnects, handlers for the server's calls,
//! pushed events, and reconnection with backoff and a fresh token.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard::client::CallError> {
//! use switchboard::client::{Client, ClientOptions};
//! let client = Client::connect("ws://127.0.0.1:7800/ws", ClientOptions::with_token("eyJ...")).await?;
//! let reply = client.call("hello/greet", serde_json::json!({"name": "Ada"})).await?;
//! let mut lobby = client.join("lobby").await?;
//! while let Some(message) = lobby.next().await {
//!     println!("{} {}", message.offset, message.data);
//! }
//! # Ok(()) }
//! ```
//!
//! The connection lives in a task of its own (`task`): it writes what the
//! handle queues, reads replies, room messages, events and server calls,
//! and when the socket drops it reconnects (250 ms doubling to 10 s, with
//! jitter), signs in with a fresh token, rejoins every room with the
//! offset and epoch it last saw, and sends again the calls that had no
//! reply. A room whose missed messages are gone says so
//! ([`ClientEvent::Recovered`] with `recovered: false`).

mod task;

use futures_util::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Where a fresh token comes from at every (re)connection.
pub type TokenSource = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// What answers one of the server's calls: `Ok(result)` or
/// `Err((code, message))`.
pub type CallHandler =
    Arc<dyn Fn(Value) -> BoxFuture<'static, Result<Value, (i64, String)>> + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// A fresh token at every (re)connection; `None`: anonymous.
    pub token: Option<TokenSource>,
    /// How long a call waits for its reply.
    pub call_timeout: Duration,
    /// The first reconnection delay (doubled up to `max_backoff`).
    pub min_backoff: Duration,
    /// The longest reconnection delay.
    pub max_backoff: Duration,
    /// Most calls waiting for a reply at once (queued while disconnected
    /// included); past it a call fails at once (-32006).
    pub max_pending: usize,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.is_some())
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            token: None,
            call_timeout: Duration::from_secs(10),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            max_pending: 1000,
        }
    }
}

impl ClientOptions {
    /// Signs in with the same `token` every time.
    pub fn with_token(token: impl Into<String>) -> ClientOptions {
        let token = token.into();
        ClientOptions {
            token: Some(Arc::new(move || {
                let token = token.clone();
                Box::pin(async move { Some(token) })
            })),
            ..ClientOptions::default()
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The server (or the action) answered with an error object.
    #[error("error {code}: {message}")]
    Rpc {
        /// Its code.
        code: i64,
        /// Its message.
        message: String,
        /// Its data, if any.
        data: Option<Value>,
    },
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was closed, or could never connect.
    #[error("the client is closed: {0}")]
    Closed(String),
}

/// A message of a joined room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomMessage {
    /// The room.
    pub room: String,
    /// Its offset in the room.
    pub offset: u64,
    /// Its data.
    pub data: Value,
}

/// What the client tells its user besides replies and room messages.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Connected (again, with `reconnected`).
    Connected {
        /// Whether this is a reconnection.
        reconnected: bool,
    },
    /// The socket dropped; reconnecting.
    Disconnected,
    /// A room was rejoined after a reconnect: whether every missed
    /// message was replayed.
    Recovered {
        /// The room.
        room: String,
        /// Whether nothing was lost.
        recovered: bool,
    },
    /// A pushed `rpc.event`.
    Event {
        /// Its name.
        event: String,
        /// Its data.
        data: Value,
    },
}

/// A joined room's messages, in order, across reconnects.
#[derive(Debug)]
pub struct Subscription {
    /// The room.
    pub room: String,
    messages: mpsc::UnboundedReceiver<RoomMessage>,
}

impl Subscription {
    /// The next message (`None` once the client is closed).
    pub async fn next(&mut self) -> Option<RoomMessage> {
        self.messages.recv().await
    }
}

/// A room as the client keeps it, to rejoin it.
#[derive(Debug)]
struct Room {
    offset: u64,
    epoch: Option<String>,
    messages: mpsc::UnboundedSender<RoomMessage>,
}

/// A call waiting for its reply.
struct PendingCall {
    /// Its frame, to send again after a reconnect.
    frame: String,
    /// Where its answer goes.
    answer: oneshot::Sender<Result<Value, CallError>>,
    /// Whether it was written to a socket (then sent again if that socket
    /// drops before the reply).
    sent: bool,
}

/// What the handle and the connection task share.
struct Shared {
    /// Calls waiting for a reply, by id.
    pending: HashMap<String, PendingCall>,
    rooms: HashMap<String, Room>,
    handlers: HashMap<String, CallHandler>,
    next_id: u64,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to a Switchboard server (cheap to clone).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Mutex<Shared>>,
    outgoing: mpsc::UnboundedSender<task::Queued>,
    events: broadcast::Sender<ClientEvent>,
    options: ClientOptions,
    stop: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`ws://host:port/ws`) and returns once the first
    /// connection is up (it then stays up, reconnecting as needed).
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, CallError> {
        let (outgoing, queued) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let client = Client {
            shared: Arc::new(Mutex::new(Shared {
                pending: HashMap::new(),
                rooms: HashMap::new(),
                handlers: HashMap::new(),
                next_id: 1,
            })),
            outgoing,
            events,
            options,
            stop: tokio_util::sync::CancellationToken::new(),
        };
        let (up, connected) = oneshot::channel();
        tokio::spawn(task::run(url.to_owned(), client.clone(), queued, up));
        match tokio::time::timeout(client.options.call_timeout, connected).await {
            Ok(Ok(())) => Ok(client),
            _ => {
                client.close();
                Err(CallError::Closed(format!("could not connect to {url}")))
            }
        }
    }

    /// Calls `method` and waits for its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, CallError> {
        self.call_with_timeout(method, params, self.options.call_timeout)
            .await
    }

    /// Calls `method`, waiting at most `timeout`.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut shared = lock(&self.shared);
            if shared.pending.len() >= self.options.max_pending {
                return Err(CallError::Rpc {
                    code: -32006,
                    message: format!(
                        "{} calls wait for replies already (max_pending); retry when some are answered",
                        self.options.max_pending
                    ),
                    data: None,
                });
            }
            let id = format!("c{}", shared.next_id);
            shared.next_id += 1;
            let frame =
                serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                    .to_string();
            let call = PendingCall {
                frame: frame.clone(),
                answer: tx,
                sent: false,
            };
            shared.pending.insert(id.clone(), call);
            let _ = self.outgoing.send((Some(id.clone()), frame));
            id
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CallError::Closed("the connection task ended".into())),
            Err(_) => {
                lock(&self.shared).pending.remove(&id);
                Err(CallError::Timeout(timeout))
            }
        }
    }

    /// Sends a notification (no reply).
    pub fn notify(&self, method: &str, params: Value) {
        let frame = serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params});
        let _ = self.outgoing.send((None, frame.to_string()));
    }

    /// Joins `room`; its messages, across reconnects, come from the
    /// subscription.
    pub async fn join(&self, room: &str) -> Result<Subscription, CallError> {
        let (tx, messages) = mpsc::unbounded_channel();
        lock(&self.shared).rooms.insert(
            room.to_owned(),
            Room {
                offset: 0,
                epoch: None,
                messages: tx,
            },
        );
        match self
            .call("rpc.join", serde_json::json!({"room": room}))
            .await
        {
            Ok(joined) => {
                if let Some(room) = lock(&self.shared).rooms.get_mut(room) {
                    room.epoch = joined["epoch"].as_str().map(str::to_owned);
                    room.offset = room.offset.max(joined["offset"].as_u64().unwrap_or(0));
                }
                Ok(Subscription {
                    room: room.to_owned(),
                    messages,
                })
            }
            Err(e) => {
                lock(&self.shared).rooms.remove(room);
                Err(e)
            }
        }
    }

    /// Leaves `room`.
    pub async fn leave(&self, room: &str) -> Result<(), CallError> {
        lock(&self.shared).rooms.remove(room);
        self.call("rpc.leave", serde_json::json!({"room": room}))
            .await
            .map(|_| ())
    }

    /// Publishes `data` to `room`; its offset.
    pub async fn publish(&self, room: &str, data: Value) -> Result<u64, CallError> {
        let reply = self
            .call(
                "rpc.publish",
                serde_json::json!({"room": room, "data": data}),
            )
            .await?;
        Ok(reply["offset"].as_u64().unwrap_or(0))
    }

    /// Answers the server's calls of `method` with `handler`.
    pub fn handle(&self, method: &str, handler: CallHandler) {
        lock(&self.shared)
            .handlers
            .insert(method.to_owned(), handler);
    }

    /// Connection changes, recoveries and pushed events, from now on.
    pub fn events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    /// Drops the current socket (it reconnects): for tests of recovery.
    pub fn drop_connection(&self) {
        let _ = self.outgoing.send((None, task::DROP.to_owned()));
    }

    /// Closes for good; waiting calls fail.
    pub fn close(&self) {
        self.stop.cancel();
        let mut shared = lock(&self.shared);
        for (_, call) in shared.pending.drain() {
            let _ = call
                .answer
                .send(Err(CallError::Closed("closed by the client".into())));
        }
        shared.rooms.clear();
    }
}
