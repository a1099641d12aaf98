//! Lifecycle events for plugins (connect, sign-in, refusal, disconnect,
//! error): each plugin that asked for some gets its own thread that calls
//! its `on_event` hook in order, so a slow hook never holds a server
//! thread and events of one connection arrive in the order they happened.

use action_api::abi::{ByteView, ConnectionEvent};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// Events queued for one plugin at most; past it new events are dropped
/// (and counted in the log) rather than stalling connections.
const QUEUE: usize = 10_000;

/// One event, owned, on its way to a plugin.
#[derive(Debug)]
pub struct OwnedEvent {
    /// An `action_api::abi::event_kind`.
    pub kind: u32,
    /// The connection.
    pub conn_id: u64,
    /// The signed-in user, if any.
    pub user: Option<Arc<str>>,
    /// JSON details.
    pub detail: String,
}

/// The sending side of one plugin's event thread.
#[derive(Debug)]
pub struct EventSender {
    tx: SyncSender<OwnedEvent>,
    mask: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Hook = unsafe extern "C" fn(*const ConnectionEvent);

impl EventSender {
    /// Starts the event thread for plugin `name`.
    pub(crate) fn start(name: &str, hook: Hook, mask: u32) -> EventSender {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name(format!("events-{name}"))
            .spawn(move || deliver(hook, rx));
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(e) => {
                tracing::error!(
                    plugin = name,
                    "could not start the event thread: {e}; the plugin gets no lifecycle events"
                );
                None
            }
        };
        EventSender { tx, mask, thread }
    }

    /// Stops the thread once it has delivered what is queued, and waits
    /// for it: after this, the plugin's hook is never called again.
    pub fn stop(self) {
        let EventSender { tx, thread, .. } = self;
        drop(tx);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Whether the plugin asked for events of `kind`.
    pub fn wants(&self, kind: u32) -> bool {
        kind < 32 && self.mask & (1 << kind) != 0
    }

    /// The plugin's mask of wanted kinds.
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// Queues an event (if wanted); never blocks.
    pub fn send(&self, event: OwnedEvent) {
        if !self.wants(event.kind) {
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(event)) => {
                tracing::warn!(
                    kind = event.kind,
                    conn = event.conn_id,
                    "a plugin's event queue is full; event dropped"
                );
            }
        }
    }
}

fn deliver(hook: Hook, rx: Receiver<OwnedEvent>) {
    for event in rx {
        let raw = ConnectionEvent {
            size: std::mem::size_of::<ConnectionEvent>() as u32,
            kind: event.kind,
            conn_id: event.conn_id,
            user: event
                .user
                .as_deref()
                .map_or(ByteView::ABSENT, |u| ByteView::of(u.as_bytes())),
            detail: ByteView::of(event.detail.as_bytes()),
        };
        // SAFETY: the plugin's own hook (which catches its panics); `raw`
        // and what it points to outlive the call.
        unsafe { hook(&raw) }
    }
}
