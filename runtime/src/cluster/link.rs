//! [`Link`]: this node's pub/sub connection to Redis, kept up by a task
//! of its own: it subscribes to this node's channel, the channel every
//! node hears, and each room with members here; it hands every message
//! heard to the broker in the order Redis sent it; and when the
//! connection drops it reconnects with backoff, subscribes again and has
//! the broker catch up on what it missed.

use super::keys;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the link could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Not connected to Redis now (it is reconnecting).
    #[error("the cluster's Redis is unreachable ({0}); retry in a moment")]
    Down(String),
    /// Redis did not confirm in time.
    #[error("the cluster's Redis did not answer within {0:?}; retry in a moment")]
    Slow(Duration),
    /// Redis refused or the connection broke.
    #[error("the cluster's Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What the link hands over: messages heard, and reconnections.
pub(super) trait Listener: Send + Sync + 'static {
    /// A message on `channel`, in the order Redis sent them.
    fn heard(&self, channel: &str, payload: &str);
    /// Subscribed again after a lost connection: catch up on what was
    /// missed meanwhile. Runs before any message of the new connection
    /// is handed over.
    fn reconnected(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

/// The subscriptions, and the sink to change them while connected.
#[derive(Default)]
struct Subscriptions {
    sink: Option<PubSubSink>,
    rooms: HashSet<String>,
}

/// The link's health, for `/status`.
#[derive(Debug, Default)]
pub(super) struct Health {
    connected: AtomicBool,
    /// Told each time the link comes up.
    up: tokio::sync::Notify,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Health {
    /// Whether the pub/sub connection is up.
    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Waits until the link is up, for at most `timeout`; whether it is.
    pub(super) async fn wait_connected(&self, timeout: Duration) -> bool {
        let up = self.up.notified();
        if self.connected() {
            return true;
        }
        let _ = tokio::time::timeout(timeout, up).await;
        self.connected()
    }

    /// Reconnections since start.
    pub(super) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// The last error, if any.
    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records an error seen anywhere in the broker.
    pub(super) fn failed(&self, error: &str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_owned());
    }
}

/// This node's pub/sub connection.
pub(super) struct Link {
    subscriptions: tokio::sync::Mutex<Subscriptions>,
    /// The link's health.
    pub(super) health: Health,
    timeout: Duration,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link that is not connected yet; `timeout` bounds each wait for
    /// Redis to confirm a subscription.
    pub(super) fn new(timeout: Duration) -> Link {
        Link {
            subscriptions: tokio::sync::Mutex::new(Subscriptions::default()),
            health: Health::default(),
            timeout,
        }
    }

    /// Keeps the connection up until `stop`: run it as a task of its own.
    /// `fixed` are the channels always subscribed; `rooms` says which
    /// rooms have members here (subscribed again after a reconnection).
    pub(super) async fn run(
        self: Arc<Self>,
        client: redis::Client,
        fixed: Vec<String>,
        rooms: impl Fn() -> Vec<String> + Send + 'static,
        listener: Arc<dyn Listener>,
        stop: CancellationToken,
    ) {
        let mut backoff = MIN_BACKOFF;
        let mut first = true;
        while !stop.is_cancelled() {
            match self.connect(&client, &fixed, &rooms).await {
                Ok(mut stream) => {
                    backoff = MIN_BACKOFF;
                    self.health.connected.store(true, Ordering::Relaxed);
                    self.health.up.notify_waiters();
                    if first {
                        tracing::info!("cluster: subscribed to Redis");
                    } else {
                        self.health.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("cluster: Redis is back; catching up on missed messages");
                        listener.reconnected().await;
                    }
                    first = false;
                    loop {
                        tokio::select! {
                            message = stream.next() => match message {
                                Some(message) => {
                                    let payload = String::from_utf8_lossy(message.get_payload_bytes());
                                    listener.heard(message.get_channel_name(), &payload);
                                }
                                None => break,
                            },
                            () = stop.cancelled() => return,
                        }
                    }
                    self.health.connected.store(false, Ordering::Relaxed);
                    self.health
                        .failed("the pub/sub connection to Redis was lost");
                    tracing::warn!("cluster: lost the pub/sub connection to Redis; reconnecting");
                    let mut subscriptions = self.subscriptions.lock().await;
                    subscriptions.sink = None;
                    subscriptions.rooms.clear();
                }
                Err(e) => {
                    self.health.failed(&e.to_string());
                    tracing::warn!(
                        "cluster: cannot subscribe to Redis: {e}; retrying in {backoff:?}"
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects and subscribes to the fixed channels and every room with
    /// members here.
    async fn connect(
        &self,
        client: &redis::Client,
        fixed: &[String],
        rooms: &impl Fn() -> Vec<String>,
    ) -> Result<redis::aio::PubSubStream, LinkError> {
        let pubsub = self.bounded(client.get_async_pubsub()).await??;
        let (mut sink, stream) = pubsub.split();
        for channel in fixed {
            self.bounded(sink.subscribe(channel)).await??;
        }
        let mut subscriptions = self.subscriptions.lock().await;
        for room in rooms() {
            self.bounded(sink.subscribe(keys::channel(&room))).await??;
            subscriptions.rooms.insert(room);
        }
        subscriptions.sink = Some(sink);
        Ok(stream)
    }

    async fn bounded<T>(&self, future: impl Future<Output = T>) -> Result<T, LinkError> {
        tokio::time::timeout(self.timeout, future)
            .await
            .map_err(|_| LinkError::Slow(self.timeout))
    }

    /// Subscribes to `room`'s channel if it is not yet, and returns once
    /// Redis confirmed: from then on every message of the room is heard.
    pub(super) async fn subscribe(&self, room: &str) -> Result<(), LinkError> {
        let mut subscriptions = self.subscriptions.lock().await;
        if subscriptions.rooms.contains(room) {
            return Ok(());
        }
        let Some(sink) = subscriptions.sink.as_mut() else {
            return Err(LinkError::Down(
                self.health
                    .last_error()
                    .unwrap_or_else(|| "not connected yet".to_owned()),
            ));
        };
        let channel = keys::channel(room);
        match tokio::time::timeout(self.timeout, sink.subscribe(&channel)).await {
            Ok(Ok(())) => {
                subscriptions.rooms.insert(room.to_owned());
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LinkError::Slow(self.timeout)),
        }
    }

    /// Unsubscribes from `room`'s channel unless `still_wanted` says a
    /// member came back meanwhile.
    pub(super) async fn unsubscribe(&self, room: &str, still_wanted: impl Fn() -> bool) {
        let mut subscriptions = self.subscriptions.lock().await;
        if still_wanted() || !subscriptions.rooms.remove(room) {
            return;
        }
        if let Some(sink) = subscriptions.sink.as_mut() {
            let channel = keys::channel(room);
            if let Ok(Err(e)) = tokio::time::timeout(self.timeout, sink.unsubscribe(&channel)).await
            {
                tracing::debug!(room, "cluster: unsubscribe failed: {e}");
            }
        }
    }
}
