//! A connection's outbound queue: bounded in frames, many senders (the
//! hub, rooms, running calls) and one receiver (the connection's task).
//!
//! tokio's `mpsc` channel would do the job, but every connection holds one
//! for its whole life, idle or not, and tokio's costs about 800 bytes
//! before the first frame (cache-padded counters and a first block of
//! slots). This one is a `VecDeque` behind a mutex: about 150 bytes while
//! empty, slots allocated on first use and freed again when a burst has
//! drained. Pushes never wait (a full queue is refused at once, and the hub
//! closes the connection as a slow consumer); a running call's reply waits
//! for a free slot instead.
//!
//! A sender can also [`nudge`](Sender::nudge) the receiver: wake it with
//! no item, so it looks at its signals (a kick, a close request, the
//! server stopping). The connection's task then waits on this queue alone,
//! rather than also on a future per signal made and dropped at every turn.

use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use tokio::sync::Notify;

/// Added to `queued` once every sender is gone.
const ENDED: usize = 1 << (usize::BITS - 1);

/// Slots a drained queue keeps; a larger buffer is freed.
const KEPT_SLOTS: usize = 16;

/// Makes a queue holding at most `capacity` items (at least one).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
        }),
        capacity: capacity.max(1),
        receiver: AtomicWaker::new(),
        nudged: AtomicBool::new(false),
        queued: AtomicUsize::new(0),
        room: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// The receiver's task, woken by a new item, a nudge, or the last
    /// sender leaving.
    receiver: AtomicWaker,
    /// A nudge the receiver has not seen yet.
    nudged: AtomicBool,
    /// Items queued, or senders gone (`ENDED`): kept beside the state so
    /// the receiver finds an empty queue without taking the lock, which
    /// it does at most turns (a wait, a burst's end).
    queued: AtomicUsize,
    /// Senders waiting for a free slot.
    room: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    /// The receiver closed the queue (or is gone): nothing more is taken.
    closed: bool,
}

impl<T> Shared<T> {
    /// The state; a panic elsewhere while it was held leaves it usable
    /// (every change to it is a single push, pop or count).
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`Sender::try_send`] did not queue an item; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// Every slot is taken.
    Full(T),
    /// The receiver closed the queue or is gone.
    Closed(T),
}

/// What [`Receiver::recv_or_nudge`] woke for.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<T> {
    /// The next item.
    Item(T),
    /// A sender nudged the receiver (see [`Sender::nudge`]).
    Nudged,
    /// Nothing is queued, and every sender is gone.
    Ended,
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued, and every sender is gone.
    Disconnected,
}

/// The sending side; clone it for each place that sends.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if a slot is free, without waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.state();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            self.shared.queued.fetch_add(1, Ordering::Release);
        }
        self.shared.receiver.wake();
        Ok(())
    }

    /// Queues `item`, waiting for a free slot; gives it back if the
    /// receiver closed the queue.
    pub async fn send(&self, item: T) -> Result<(), T> {
        // Usually a slot is free: no waiting registered (which locks).
        let mut item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(item)) => return Err(item),
            Err(TrySendError::Full(item)) => item,
        };
        loop {
            // Registered before the attempt, so a slot freed in between
            // is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Wakes the receiver with no item, so that it looks at whatever it
    /// was signalled through (set the signal first). A nudge not yet seen
    /// is not repeated: many nudges may wake it once.
    pub fn nudge(&self) {
        self.shared.nudged.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }

    /// Free slots now.
    pub fn capacity(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.state().items.len())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Sender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.state();
            state.senders -= 1;
            if state.senders == 0 {
                self.shared.queued.fetch_add(ENDED, Ordering::Release);
            }
            state.senders == 0
        };
        if last {
            self.shared.receiver.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// The receiving side: the connection's task.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// Takes the next item if there is one, without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        // Changed only under the lock, after the change it counts: zero
        // here means nothing was queued when it was read, and a sender
        // queueing now wakes the receiver after it counts.
        if self.shared.queued.load(Ordering::Acquire) == 0 {
            return Err(TryRecvError::Empty);
        }
        let (taken, was_full) = {
            let mut state = self.shared.state();
            let was_full = state.items.len() >= self.shared.capacity;
            let taken = match state.items.pop_front() {
                Some(item) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
                        state.items = VecDeque::new();
                    }
                    Ok(item)
                }
                None if state.senders == 0 => Err(TryRecvError::Disconnected),
                None => Err(TryRecvError::Empty),
            };
            (taken, was_full)
        };
        // A sender waits only after finding every slot taken, registered
        // before it looked: waking all of them when a slot frees up in a
        // full queue misses none (those that lose the race wait again).
        if was_full && taken.is_ok() {
            self.shared.room.notify_waiters();
        }
        taken
    }

    /// Waits for the next item, passing over nudges; `None` once nothing
    /// is queued and every sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.recv_or_nudge().await {
                Received::Item(item) => return Some(item),
                Received::Ended => return None,
                Received::Nudged => {}
            }
        }
    }

    /// Waits for the next item or a nudge, whichever comes first; a nudge
    /// comes before items queued earlier (a signal outranks the backlog).
    pub async fn recv_or_nudge(&mut self) -> Received<T> {
        poll_fn(|cx| {
            if let Some(received) = self.ready() {
                return Poll::Ready(received);
            }
            self.shared.receiver.register(cx.waker());
            // Again, after registering: what came in between woke no one.
            match self.ready() {
                Some(received) => Poll::Ready(received),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// A nudge not yet seen, else the next item, else nothing.
    fn ready(&mut self) -> Option<Received<T>> {
        // Checked with a plain load first: a swap would write the flag's
        // cache line at every turn.
        if self.shared.nudged.load(Ordering::Acquire)
            && self.shared.nudged.swap(false, Ordering::AcqRel)
        {
            return Some(Received::Nudged);
        }
        match self.try_recv() {
            Ok(item) => Some(Received::Item(item)),
            Err(TryRecvError::Disconnected) => Some(Received::Ended),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Refuses every later send; items already queued can still be taken.
    pub fn close(&mut self) {
        self.shared.state().closed = true;
        self.shared.room.notify_waiters();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn items_come_out_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.try_send(2), Ok(()));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.capacity(), 1);
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_closed_queue_refuses_sends_but_gives_what_it_holds() {
        let (tx, mut rx) = channel(4);
        assert_eq!(tx.try_send("a"), Ok(()));
        rx.close();
        assert_eq!(tx.try_send("b"), Err(TrySendError::Closed("b")));
        assert_eq!(rx.try_recv(), Ok("a"));
        drop(rx);
        assert_eq!(tx.try_send("c"), Err(TrySendError::Closed("c")));
    }

    #[tokio::test]
    async fn recv_ends_when_the_last_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        assert_eq!(tx.try_send(1), Ok(()));
        drop(tx);
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = other.try_send(2);
        });
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
        let _ = later.await;
    }

    #[tokio::test]
    async fn a_nudge_wakes_the_receiver_once_and_comes_before_items() {
        let (tx, mut rx) = channel(4);
        let waiting = tokio::spawn(async move {
            let first = rx.recv_or_nudge().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.nudge();
        let (first, mut rx) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the nudge woke the waiting receiver")
            .expect("the task ran");
        assert_eq!(first, Received::Nudged);
        assert_eq!(tx.try_send(1), Ok(()));
        tx.nudge();
        tx.nudge();
        assert_eq!(rx.recv_or_nudge().await, Received::Nudged);
        assert_eq!(rx.recv_or_nudge().await, Received::Item(1));
        drop(tx);
        assert_eq!(rx.recv_or_nudge().await, Received::Ended);
    }

    #[tokio::test]
    async fn send_waits_for_a_free_slot_and_fails_once_closed() {
        let (tx, mut rx) = channel(1);
        assert_eq!(tx.try_send(1), Ok(()));
        let waiting = tokio::spawn(async move {
            let sent = tx.send(2).await;
            (sent, tx)
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        let (sent, tx) = waiting.await.unwrap_or((Err(0), channel(1).0));
        assert_eq!(sent, Ok(()));
        assert_eq!(tx.try_send(3), Ok(()));
        let blocked = tokio::spawn(async move { tx.send(4).await });
        tokio::task::yield_now().await;
        rx.close();
        assert_eq!(blocked.await.ok(), Some(Err(4)));
    }

    #[test]
    fn a_drained_burst_frees_its_slots() {
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            assert_eq!(tx.try_send(i), Ok(()));
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.shared.state().items.capacity(), 0);
    }
}
