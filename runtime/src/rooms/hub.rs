//! [`Hub`]: every open connection's outbound queue, by connection id and
//! by user, so that pushes (room messages, sends from actions) reach them.
//!
//! A push never waits: it is a `try_send` into the connection's queue,
//! which is bounded in frames and in bytes. A connection
//! whose queue is full is a slow consumer: it is told to close with 4008
//! and counted, so one client that does not read never grows the server's
//! memory, whatever the size of the messages. Frames are [`Outgoing`],
//! reference-counted: a message for a thousand connections is serialized
//! once.

use crate::auth::Identity;
use crate::rate::TokenBucket;
use crate::rooms::queue::{self, TrySendError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// A frame queued for a connection. Shared, so a message for a thousand
/// connections is serialized once and queued at the cost of a reference
/// count; and one pointer wide, so a queue's first slot (held by every
/// connection) and the slots it keeps between bursts (up to
/// [`queue::KEPT_SLOTS`]) cost 8 bytes each, not the 32 of `Utf8Bytes`.
pub type Outgoing = Arc<Utf8Bytes>;

impl queue::Weighed for Outgoing {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// Wraps a frame's text for the queue.
pub fn outgoing(text: impl Into<Utf8Bytes>) -> Outgoing {
    Arc::new(text.into())
}

/// How many handles ahead of its pushes a fan-out asks for their queues'
/// memory: enough to cover a cache miss with the pushes in between.
const PREFETCH_AHEAD: usize = 8;

/// Shards of the connection map; a power of two.
const SHARDS: usize = 32;

/// What everything acting on one connection shares besides its queue
/// (which counts its own bytes, and is sealed once the connection is
/// told to close): the rooms it created lately, the data actions set on
/// it, who is signed in, and how many of its calls are running. One
/// allocation per connection for all of them.
#[derive(Debug)]
pub struct ConnFlow {
    /// Per-connection data set by actions (JSON by key), gone with it.
    pub data: Mutex<HashMap<String, String>>,
    room_creations: Mutex<TokenBucket>,
    /// Who is signed in (for revocations) and, once the server asked it
    /// to, how the connection is to close.
    control: Mutex<Control>,
}

/// A close the server asked of a connection (`disconnect`, `revoke`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloseRequest {
    /// The close code.
    pub code: u16,
    /// The close reason (at most 123 bytes are sent).
    pub reason: String,
}

/// What the server may need to tell a connection besides frames.
#[derive(Debug, Default)]
struct Control {
    identity: Option<Arc<Identity>>,
    close: Option<Box<CloseRequest>>,
}

impl ConnFlow {
    /// A connection that may create `rooms_per_minute` rooms a minute.
    pub fn new(rooms_per_minute: u32) -> ConnFlow {
        ConnFlow {
            data: Mutex::new(HashMap::new()),
            room_creations: Mutex::new(TokenBucket::new(
                rooms_per_minute,
                std::time::Duration::from_secs(60),
            )),
            control: Mutex::new(Control::default()),
        }
    }

    /// Records who is signed in on the connection now.
    pub fn set_identity(&self, identity: Option<Arc<Identity>>) {
        lock(&self.control).identity = identity;
    }

    /// Who is signed in on the connection, as last recorded.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        lock(&self.control).identity.clone()
    }

    /// The close the server asked of this connection, if any (taken: the
    /// connection closes once).
    pub fn take_close_request(&self) -> Option<CloseRequest> {
        lock(&self.control).close.take().map(|b| *b)
    }

    /// Takes one room creation from the connection's allowance; `false`
    /// when it created its limit of rooms in the last minute.
    pub fn take_room_creation(&self) -> bool {
        self.room_creations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(std::time::Instant::now())
    }

    /// Gives back a creation taken for a room that was not made after all.
    pub fn give_back_room_creation(&self) {
        self.room_creations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back();
    }
}

/// How to reach one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection id.
    pub conn_id: u64,
    /// Who is signed in on it, if anyone.
    pub user: Option<Arc<str>>,
    /// Its outbound queue.
    pub tx: queue::Sender<Outgoing>,
    /// Cancelled to make the connection close with 4008 (or as its
    /// `flow` asks); its queue is nudged too, which is what an idle
    /// connection waits on. The token ends a write that is stalled.
    pub kick: CancellationToken,
    /// When it connected (seconds since the Unix epoch).
    pub connected_at: u64,
    /// The peer's address.
    pub remote_addr: Arc<str>,
    /// Bytes queued, rooms created, data set by actions.
    pub flow: Arc<ConnFlow>,
}

/// All open connections.
#[derive(Debug)]
pub struct Hub {
    shards: Vec<Mutex<HashMap<u64, ConnHandle>>>,
    users: Mutex<HashMap<Arc<str>, HashSet<u64>>>,
    /// Most bytes queued for one connection.
    max_queue_bytes: usize,
    slow_consumers: AtomicU64,
    stalled_writes: AtomicU64,
    /// Server-to-client calls awaiting an answer, by call id.
    pending_calls: Mutex<HashMap<String, PendingCall>>,
    next_call: AtomicU64,
    /// Connections subscribed to server events (`rpc.subscribe`), by event.
    event_subscribers: Mutex<HashMap<&'static str, HashSet<u64>>>,
    /// The server is stopping: every connection, and any registered from
    /// now on, has been nudged to look at its shutdown signal.
    stopping: AtomicBool,
}

/// The server events a client may subscribe to with `rpc.subscribe`.
pub const SERVER_EVENTS: [&str; 1] = ["actions.changed"];

/// A client's answer to a server call: `Ok(result)` or `Err(error object)`,
/// as JSON text.
pub type ClientAnswer = Result<String, String>;

#[derive(Debug)]
struct PendingCall {
    conn_id: u64,
    answer: std::sync::mpsc::Sender<ClientAnswer>,
}

/// How a server-to-client call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CallOutcome {
    /// The client answered (result or error object).
    Answered(ClientAnswer),
    /// No answer in time.
    TimedOut,
    /// No such connection, or it could not take the call.
    Gone,
}

impl Hub {
    /// No connections yet; each may have `max_queue_bytes` queued.
    pub fn new(max_queue_bytes: usize) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            users: Mutex::new(HashMap::new()),
            max_queue_bytes,
            slow_consumers: AtomicU64::new(0),
            stalled_writes: AtomicU64::new(0),
            pending_calls: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            next_call: AtomicU64::new(1),
            event_subscribers: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single map operation: a panic
    // cannot leave a map half-changed, so poison is harmless.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    fn shard(&self, conn_id: u64) -> &Mutex<HashMap<u64, ConnHandle>> {
        &self.shards[(conn_id as usize) & (SHARDS - 1)]
    }

    /// Adds a connection.
    pub fn register(&self, handle: ConnHandle) {
        if let Some(user) = &handle.user {
            lock(&self.users)
                .entry(Arc::clone(user))
                .or_default()
                .insert(handle.conn_id);
        }
        let nudge = handle.tx.clone();
        lock(self.shard(handle.conn_id)).insert(handle.conn_id, handle);
        // After the insert: either `nudge_all` finds it, or this sees the
        // flag `nudge_all` set before it looked.
        if self.stopping.load(Ordering::SeqCst) {
            nudge.nudge();
        }
    }

    /// Nudges every connection, now and any registered later, to look at
    /// the server's shutdown signal (cancel it first). A connection waits
    /// on its queue alone, so this is how shutdown reaches an idle one.
    pub fn nudge_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for shard in &self.shards {
            for handle in lock(shard).values() {
                handle.tx.nudge();
            }
        }
    }

    /// Removes a connection, and ends the server calls waiting on it.
    pub fn unregister(&self, conn_id: u64) {
        // Dropping a call's sender wakes its waiting thread at once.
        lock(&self.pending_calls).retain(|_, call| call.conn_id != conn_id);
        for subscribers in lock(&self.event_subscribers).values_mut() {
            subscribers.remove(&conn_id);
        }
        let Some(handle) = lock(self.shard(conn_id)).remove(&conn_id) else {
            return;
        };
        if let Some(user) = handle.user {
            let mut users = lock(&self.users);
            if let Some(conns) = users.get_mut(&user) {
                conns.remove(&conn_id);
                if conns.is_empty() {
                    users.remove(&user);
                }
            }
        }
    }

    /// Records who is signed in on a connection (after `rpc.auth`), in
    /// place: pushes meanwhile are never lost. Returns the updated handle.
    pub fn set_user(&self, conn_id: u64, user: Arc<str>) -> Option<ConnHandle> {
        let (old, updated) = {
            let mut shard = lock(self.shard(conn_id));
            let handle = shard.get_mut(&conn_id)?;
            let old = handle.user.replace(Arc::clone(&user));
            (old, handle.clone())
        };
        let mut users = lock(&self.users);
        if let Some(old) = old
            && let Some(conns) = users.get_mut(&old)
        {
            conns.remove(&conn_id);
            if conns.is_empty() {
                users.remove(&old);
            }
        }
        users.entry(user).or_default().insert(conn_id);
        Some(updated)
    }

    /// A connection's handle.
    pub fn get(&self, conn_id: u64) -> Option<ConnHandle> {
        lock(self.shard(conn_id)).get(&conn_id).cloned()
    }

    /// Queues `frame` for one connection without waiting. A queue full in
    /// frames or in bytes closes the connection with 4008; returns whether
    /// it was queued.
    pub fn push(&self, handle: &ConnHandle, frame: Outgoing) -> bool {
        // A queue holds at most `max_queue_bytes` plus one frame: a burst
        // of a few large frames to a reader that keeps up passes.
        match handle.tx.try_send(frame, self.max_queue_bytes) {
            Ok(()) => true,
            Err(TrySendError::TooManyBytes(_)) => {
                self.kick(handle, "bytes");
                false
            }
            Err(TrySendError::Full(_)) => {
                self.kick(handle, "frames");
                false
            }
            // Closing (a slow consumer, a close asked for) or closed:
            // nothing more is queued for it.
            Err(TrySendError::Sealed(_) | TrySendError::Closed(_)) => false,
        }
    }

    /// Pushes `frame` to each of `handles` (as [`push`](Self::push));
    /// returns to how many it was queued. A fan-out: each queue's memory
    /// is cold by its turn, so it is asked for [`PREFETCH_AHEAD`] handles
    /// ahead (see [`queue::Sender::prefetch`]). Handles in the order their
    /// connections came (as a room's members are kept) help further: their
    /// queues were allocated in that order.
    pub fn push_to_each<'a>(
        &self,
        handles: impl Iterator<Item = &'a ConnHandle> + Clone,
        frame: &Outgoing,
    ) -> usize {
        let mut ahead = handles.clone().skip(PREFETCH_AHEAD);
        let mut queued = 0;
        for handle in handles {
            if let Some(later) = ahead.next() {
                later.tx.prefetch();
            }
            if self.push(handle, Arc::clone(frame)) {
                queued += 1;
            }
        }
        queued
    }

    /// Tells a connection whose queue overflowed to close with 4008, and
    /// counts it once.
    fn kick(&self, handle: &ConnHandle, full_in: &'static str) {
        if handle.tx.seal() {
            self.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                conn = handle.conn_id,
                queued_bytes = handle.tx.queued_bytes(),
                "slow consumer: its outbound queue is full in {full_in}; closing with 4008"
            );
            handle.kick.cancel();
            handle.tx.nudge();
        }
    }

    /// Asks a connection to close with `code` and `reason` (an operator's
    /// `disconnect`, a revoked token): nothing more is queued for it, and
    /// it closes once its current write is done. `false` if it is not open
    /// here or already closing.
    pub fn close(&self, conn_id: u64, request: &CloseRequest) -> bool {
        match self.get(conn_id) {
            Some(handle) => Self::close_handle(&handle, request),
            None => false,
        }
    }

    fn close_handle(handle: &ConnHandle, request: &CloseRequest) -> bool {
        if !handle.tx.seal() {
            return false;
        }
        lock(&handle.flow.control).close = Some(Box::new(request.clone()));
        handle.kick.cancel();
        handle.tx.nudge();
        true
    }

    /// Closes every connection of `user` on this server; how many.
    pub fn close_user(&self, user: &str, request: &CloseRequest) -> usize {
        self.connections_of(user)
            .into_iter()
            .filter(|conn| self.close(*conn, request))
            .count()
    }

    /// Closes every connection whose signed-in identity `revoked` says is
    /// revoked; how many.
    pub fn close_signed_in_where(
        &self,
        revoked: impl Fn(&Identity) -> bool,
        request: &CloseRequest,
    ) -> usize {
        let mut closed = 0;
        for shard in &self.shards {
            let handles: Vec<ConnHandle> = lock(shard).values().cloned().collect();
            for handle in handles {
                let identity = handle.flow.identity();
                if identity.is_some_and(|i| revoked(&i)) && Self::close_handle(&handle, request) {
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Counts a connection dropped because a write to it stalled past
    /// `write_timeout_ms`.
    pub fn count_stalled_write(&self) {
        self.stalled_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections dropped because a write stalled, since start.
    pub fn stalled_writes(&self) -> u64 {
        self.stalled_writes.load(Ordering::Relaxed)
    }

    /// Most bytes queued for one connection.
    pub fn max_queue_bytes(&self) -> usize {
        self.max_queue_bytes
    }

    /// Whether frames of `lens` bytes (in order) would all be queued for
    /// `handle` now, by the rule of [`Hub::push`]: each is taken while the
    /// queue holds at most `outbound_queue_bytes`, and the frame slots
    /// suffice.
    pub fn would_take(&self, handle: &ConnHandle, lens: &[usize]) -> bool {
        let before_last: usize = lens.iter().rev().skip(1).sum();
        lens.len() <= handle.tx.capacity()
            && handle.tx.queued_bytes().saturating_add(before_last) <= self.max_queue_bytes
    }

    /// Subscribes a connection to a server event; `false` if `event` is
    /// not one of [`SERVER_EVENTS`].
    pub fn subscribe_event(&self, conn_id: u64, event: &str) -> bool {
        let Some(event) = SERVER_EVENTS.iter().find(|e| **e == event) else {
            return false;
        };
        lock(&self.event_subscribers)
            .entry(event)
            .or_default()
            .insert(conn_id);
        true
    }

    /// Pushes an `rpc.event` to every connection subscribed to `event`;
    /// returns how many it reached.
    pub fn notify_event(&self, event: &str, data: &serde_json::Value) -> usize {
        let conns: Vec<u64> = lock(&self.event_subscribers)
            .get(event)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        if conns.is_empty() {
            return 0;
        }
        let frame = outgoing(crate::rpc::protocol::event_push(event, data));
        conns
            .into_iter()
            .filter(|c| self.send_to_conn(*c, Arc::clone(&frame)))
            .count()
    }

    /// Sends to one connection; `false` if it is gone or too slow.
    pub fn send_to_conn(&self, conn_id: u64, frame: Outgoing) -> bool {
        self.get(conn_id).is_some_and(|h| self.push(&h, frame))
    }

    /// Sends to every connection of `user`; returns how many got it.
    pub fn send_to_user(&self, user: &str, frame: &Outgoing) -> usize {
        self.connections_of(user)
            .into_iter()
            .filter(|c| self.send_to_conn(*c, frame.clone()))
            .count()
    }

    /// The ids of `user`'s connections now (taken out of the lock, so
    /// what is done to each does not hold it).
    fn connections_of(&self, user: &str) -> Vec<u64> {
        lock(&self.users)
            .get(user)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Sends to every connection (or, with `signed_in_only`, every
    /// signed-in one) except those in `except`; returns how many got it.
    pub fn broadcast(&self, frame: &Outgoing, except: &[u64], signed_in_only: bool) -> usize {
        let mut sent = 0;
        for shard in &self.shards {
            let handles: Vec<ConnHandle> = lock(shard)
                .values()
                .filter(|h| !except.contains(&h.conn_id))
                .filter(|h| !signed_in_only || h.user.is_some())
                .cloned()
                .collect();
            sent += self.push_to_each(handles.iter(), frame);
        }
        sent
    }

    /// Calls `method` on a client and blocks the calling thread until it
    /// answers or `timeout` passes. Call it only from a thread that may
    /// block (plugin threads), never from an async task.
    pub fn call_client(
        &self,
        conn_id: u64,
        method: &str,
        params: &str,
        timeout: std::time::Duration,
    ) -> CallOutcome {
        let Some(handle) = self.get(conn_id) else {
            return CallOutcome::Gone;
        };
        let id = format!("s{}", self.next_call.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.pending_calls).insert(
            id.clone(),
            PendingCall {
                conn_id,
                answer: tx,
            },
        );
        let method = serde_json::to_string(method).unwrap_or_else(|_| "\"\"".to_owned());
        let frame =
            format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":{method},"params":{params}}}"#);
        if !self.push(&handle, outgoing(frame)) {
            lock(&self.pending_calls).remove(&id);
            return CallOutcome::Gone;
        }
        let outcome = match rx.recv_timeout(timeout) {
            Ok(answer) => CallOutcome::Answered(answer),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => CallOutcome::TimedOut,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => CallOutcome::Gone,
        };
        lock(&self.pending_calls).remove(&id);
        outcome
    }

    /// Delivers a client's answer to the server call `id`, if that call is
    /// waiting and was made to this connection; returns whether it was.
    pub fn answer_call(&self, conn_id: u64, id: &str, answer: ClientAnswer) -> bool {
        let mut pending = lock(&self.pending_calls);
        match pending.get(id) {
            Some(call) if call.conn_id == conn_id => pending
                .remove(id)
                .is_some_and(|call| call.answer.send(answer).is_ok()),
            _ => false,
        }
    }

    /// Connections closed as slow consumers since start.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered connection with `slots` frames of queue.
    fn connect(
        hub: &Hub,
        conn_id: u64,
        user: Option<&str>,
        slots: usize,
    ) -> queue::Receiver<Outgoing> {
        let (tx, rx) = queue::channel(slots);
        hub.register(ConnHandle {
            conn_id,
            user: user.map(Arc::from),
            tx,
            kick: CancellationToken::new(),
            connected_at: 0,
            remote_addr: Arc::from("test"),
            flow: Arc::new(ConnFlow::new(10)),
        });
        rx
    }

    fn frame(len: usize) -> Outgoing {
        outgoing("x".repeat(len))
    }

    #[test]
    fn a_queue_past_its_bytes_is_kicked_once_and_counted() {
        let hub = Hub::new(100);
        let _rx = connect(&hub, 1, Some("ann"), 1024);
        let handle = hub.get(1).unwrap_or_else(|| panic!("registered"));
        assert!(hub.push(&handle, frame(60)));
        // Queued 60 <= 100: taken, though it goes past the bound.
        assert!(hub.push(&handle, frame(60)));
        assert_eq!(handle.tx.queued_bytes(), 120);
        assert!(!hub.push(&handle, frame(1)), "more than 100 queued");
        assert!(handle.kick.is_cancelled());
        assert!(!hub.push(&handle, frame(1)));
        assert_eq!(hub.slow_consumers(), 1, "counted once");
        assert_eq!(
            handle.tx.queued_bytes(),
            120,
            "refused pushes count nothing"
        );
    }

    #[test]
    fn a_queue_past_its_frames_is_kicked() {
        let hub = Hub::new(1 << 20);
        let _rx = connect(&hub, 1, None, 2);
        let handle = hub.get(1).unwrap_or_else(|| panic!("registered"));
        assert!(hub.push(&handle, frame(1)) && hub.push(&handle, frame(1)));
        assert!(!hub.push(&handle, frame(1)));
        assert!(handle.kick.is_cancelled());
        assert_eq!(handle.tx.queued_bytes(), 2);
    }

    #[test]
    fn would_take_follows_the_push_rule() {
        let hub = Hub::new(100);
        let _rx = connect(&hub, 1, None, 3);
        let handle = hub.get(1).unwrap_or_else(|| panic!("registered"));
        assert!(hub.would_take(&handle, &[90, 500]), "all but the last fit");
        assert!(!hub.would_take(&handle, &[90, 20, 1]));
        assert!(
            !hub.would_take(&handle, &[1, 1, 1, 1]),
            "four frames, three slots"
        );
    }

    #[test]
    fn users_broadcasts_and_unregistering() {
        let hub = Hub::new(1 << 20);
        let mut phone = connect(&hub, 1, Some("ann"), 8);
        let mut laptop = connect(&hub, 2, Some("ann"), 8);
        let mut anon = connect(&hub, 3, None, 8);
        assert_eq!(hub.send_to_user("ann", &frame(3)), 2);
        assert!(phone.try_recv().is_ok() && laptop.try_recv().is_ok());
        assert_eq!(hub.broadcast(&frame(3), &[1], true), 1, "laptop only");
        assert_eq!(hub.broadcast(&frame(3), &[1], false), 2, "laptop and anon");
        assert!(anon.try_recv().is_ok());
        // Signing in moves the connection into the user's set.
        assert!(hub.set_user(3, Arc::from("ann")).is_some());
        assert_eq!(hub.send_to_user("ann", &frame(3)), 3);
        hub.unregister(1);
        assert_eq!(hub.send_to_user("ann", &frame(3)), 2);
        assert!(hub.get(1).is_none());
    }
}
