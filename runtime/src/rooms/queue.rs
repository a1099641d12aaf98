//! A connection's outbound queue: bounded in frames and in bytes, many
//! senders (the hub, rooms, running calls) and one receiver (the
//! connection's task).
//!
//! tokio's `mpsc` channel would do the job, but every connection holds one
//! for its whole life, idle or not, and tokio's costs about 800 bytes
//! before the first frame (cache-padded counters and a first block of
//! slots). This one is a `VecDeque` behind a mutex: about 150 bytes while
//! empty, slots allocated only past the first item. A drained queue keeps
//! up to [`KEPT_SLOTS`] of them for the next burst (a busy connection
//! would otherwise free and allocate them again at every turn: cold
//! memory, and allocator work); a larger buffer is freed at once, and the
//! owner frees the kept one when its connection goes quiet
//! ([`Receiver::free_spare`], at the heartbeat). Pushes never wait (a full queue is refused at once,
//! and the hub closes the connection as a slow consumer); a running call's
//! reply waits for a free slot instead.
//!
//! A push to a reader that keeps up touches as little memory as it can: a
//! room message goes to thousands of queues one after another, and each
//! queue's memory is cold by then. The oldest item waits in a slot of its
//! own beside the lock (no buffer to reach), and the bytes queued and the
//! seal (see [`Sender::seal`]) are counted under the same lock rather than
//! in a separate allocation: one or two cache lines per push.
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

/// Slots a drained queue keeps for the next burst (512 bytes of them at
/// most); a larger buffer is freed.
pub const KEPT_SLOTS: usize = 64;

/// What an item counts against a queue's bound in bytes.
pub trait Weighed {
    /// The item's size in bytes.
    fn weight(&self) -> usize;
}

/// Makes a queue holding at most `capacity` items (at least one).
pub fn channel<T: Weighed>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        state: Mutex::new(State {
            first: None,
            bytes: 0,
            senders: 1,
            closed: false,
            sealed: false,
            rest: VecDeque::new(),
        }),
        queued: AtomicUsize::new(0),
        receiver: AtomicWaker::new(),
        nudged: AtomicBool::new(false),
        room: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

/// In declaration order (`repr(C)`): what a push touches comes first and
/// together (the bound, the lock, the first slot, the counts, the
/// receiver's waker), so [`Sender::prefetch`] can ask for all of it.
#[repr(C)]
struct Shared<T> {
    capacity: usize,
    state: Mutex<State<T>>,
    /// Items queued, or senders gone (`ENDED`): kept beside the state so
    /// the receiver finds an empty queue without taking the lock, which
    /// it does at most turns (a wait, a burst's end).
    queued: AtomicUsize,
    /// The receiver's task, woken by a new item, a nudge, or the last
    /// sender leaving.
    receiver: AtomicWaker,
    /// A nudge the receiver has not seen yet.
    nudged: AtomicBool,
    /// Senders waiting for a free slot.
    room: Notify,
}

/// In declaration order (`repr(C)`), as [`Shared`].
#[repr(C)]
struct State<T> {
    /// The oldest item; `rest` holds the others, in order. A queue that
    /// holds one item at a time never allocates a buffer.
    first: Option<T>,
    /// The weight of every item queued.
    bytes: usize,
    senders: usize,
    /// The receiver closed the queue (or is gone): nothing more is taken.
    closed: bool,
    /// Pushes are refused ([`Sender::seal`]); replies are still taken.
    sealed: bool,
    rest: VecDeque<T>,
}

impl<T> State<T> {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn push(&mut self, item: T, weight: usize) {
        self.bytes = self.bytes.saturating_add(weight);
        match self.first {
            None => self.first = Some(item),
            Some(_) => self.rest.push_back(item),
        }
    }

    fn pop(&mut self) -> Option<T>
    where
        T: Weighed,
    {
        let item = self.first.take()?;
        self.first = self.rest.pop_front();
        if self.first.is_none() && self.rest.capacity() > KEPT_SLOTS {
            self.rest = VecDeque::new();
        }
        self.bytes = self.bytes.saturating_sub(item.weight());
        Some(item)
    }
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
    /// The queue holds more bytes than the push allows.
    TooManyBytes(T),
    /// The queue is sealed ([`Sender::seal`]): it takes no more pushes.
    Sealed(T),
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

impl<T: Weighed> Sender<T> {
    /// Pushes `item` if a slot is free, the queue holds at most
    /// `max_bytes` (so it holds at most that plus one item, and a burst of
    /// a few large items to a reader that keeps up passes) and it is not
    /// sealed; never waits.
    pub fn try_send(&self, item: T, max_bytes: usize) -> Result<(), TrySendError<T>> {
        self.enqueue(item, Some(max_bytes))
    }

    /// Queues `item` if a slot is free and the queue is open; a push
    /// (`Some` bound in bytes) also only if the queue is not sealed and
    /// holds at most that many bytes, while a running call's reply
    /// (`None`) is taken whatever its bytes or seal.
    fn enqueue(&self, item: T, push_bound: Option<usize>) -> Result<(), TrySendError<T>> {
        {
            let mut state = self.shared.state();
            if state.closed {
                return Err(TrySendError::Closed(item));
            }
            if push_bound.is_some() && state.sealed {
                return Err(TrySendError::Sealed(item));
            }
            if state.len() >= self.shared.capacity {
                return Err(TrySendError::Full(item));
            }
            if push_bound.is_some_and(|max| state.bytes > max) {
                return Err(TrySendError::TooManyBytes(item));
            }
            let weight = item.weight();
            state.push(item, weight);
            self.shared.queued.fetch_add(1, Ordering::Release);
        }
        self.shared.receiver.wake();
        Ok(())
    }

    /// Queues `item` (a running call's reply: its bytes count, but no
    /// bound in bytes refuses it, nor a seal), waiting for a free slot;
    /// gives it back if the receiver closed the queue.
    pub async fn send(&self, item: T) -> Result<(), T> {
        // Usually a slot is free: no waiting registered (which locks).
        let mut item = match self.enqueue(item, None) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(item)) => item,
            Err(
                TrySendError::Closed(item)
                | TrySendError::Sealed(item)
                | TrySendError::TooManyBytes(item),
            ) => return Err(item),
        };
        loop {
            // Registered before the attempt, so a slot freed in between
            // is not missed.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.enqueue(item, None) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => item = back,
                Err(
                    TrySendError::Closed(back)
                    | TrySendError::Sealed(back)
                    | TrySendError::TooManyBytes(back),
                ) => return Err(back),
            }
            room.await;
        }
    }
}

impl<T> Sender<T> {
    /// Asks the CPU to start loading what a push touches (the lock, the
    /// first slot, the counts), without waiting for it. A room's fan-out
    /// calls it a few members ahead of its pushes: by then each queue's
    /// memory is cold (thousands of queues were pushed to since), and a
    /// push that finds its lines already on their way costs a fraction of
    /// one that misses the cache.
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // What a push touches: from the start to the receiver's waker
            // (at most 128 bytes, so these three cover every line of it).
            let hot = std::mem::offset_of!(Shared<T>, nudged);
            debug_assert!(hot <= 128, "three prefetches cover 128 bytes");
            let start = Arc::as_ptr(&self.shared).cast::<i8>();
            // SAFETY: a prefetch is only a hint: it never faults, whatever
            // the address, and changes no memory. These addresses are the
            // queue's shared state, alive while `self` is.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start);
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(hot - 1));
            }
        }
    }

    /// Wakes the receiver with no item, so that it looks at whatever it
    /// was signalled through (set the signal first). A nudge not yet seen
    /// is not repeated: many nudges may wake it once.
    pub fn nudge(&self) {
        self.shared.nudged.store(true, Ordering::Release);
        self.shared.receiver.wake();
    }

    /// Refuses every later [`try_send`](Self::try_send) (the connection
    /// is closing); `true` if it was not sealed before.
    pub fn seal(&self) -> bool {
        !std::mem::replace(&mut self.shared.state().sealed, true)
    }

    /// Whether the queue was sealed.
    pub fn is_sealed(&self) -> bool {
        self.shared.state().sealed
    }

    /// Free slots now.
    pub fn capacity(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.state().len())
    }

    /// The weight of every item queued now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.state().bytes
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

impl<T: Weighed> Receiver<T> {
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
            let was_full = state.len() >= self.shared.capacity;
            let taken = match state.pop() {
                Some(item) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
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
}

impl<T> Receiver<T> {
    /// Frees the slots a drained queue kept for its next burst, if nothing
    /// waits in them: for a connection gone quiet.
    pub fn free_spare(&mut self) {
        let mut state = self.shared.state();
        if state.rest.is_empty() && state.rest.capacity() > 0 {
            state.rest = VecDeque::new();
        }
    }

    /// Whether nothing is queued now (read without the lock).
    pub fn is_empty(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) & !ENDED == 0
    }

    /// Whether the queue was sealed ([`Sender::seal`]).
    pub fn is_sealed(&self) -> bool {
        self.shared.state().sealed
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

    /// No bound in bytes.
    const ANY: usize = usize::MAX;

    impl Weighed for i32 {
        fn weight(&self) -> usize {
            self.unsigned_abs() as usize
        }
    }

    impl Weighed for &str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[test]
    fn items_come_out_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1, ANY), Ok(()));
        assert_eq!(tx.try_send(2, ANY), Ok(()));
        assert_eq!(tx.capacity(), 0);
        assert_eq!(tx.try_send(3, ANY), Err(TrySendError::Full(3)));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(tx.capacity(), 1);
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_closed_queue_refuses_sends_but_gives_what_it_holds() {
        let (tx, mut rx) = channel(4);
        assert_eq!(tx.try_send("a", ANY), Ok(()));
        rx.close();
        assert_eq!(tx.try_send("b", ANY), Err(TrySendError::Closed("b")));
        assert_eq!(rx.try_recv(), Ok("a"));
        drop(rx);
        assert_eq!(tx.try_send("c", ANY), Err(TrySendError::Closed("c")));
    }

    #[tokio::test]
    async fn recv_ends_when_the_last_sender_is_gone() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        assert_eq!(tx.try_send(1, ANY), Ok(()));
        drop(tx);
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = other.try_send(2, ANY);
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
        assert_eq!(tx.try_send(1, ANY), Ok(()));
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
        assert_eq!(tx.try_send(1, ANY), Ok(()));
        let waiting = tokio::spawn(async move {
            let sent = tx.send(2).await;
            (sent, tx)
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        let (sent, tx) = waiting.await.unwrap_or((Err(0), channel(1).0));
        assert_eq!(sent, Ok(()));
        assert_eq!(tx.try_send(3, ANY), Ok(()));
        let blocked = tokio::spawn(async move { tx.send(4).await });
        tokio::task::yield_now().await;
        rx.close();
        assert_eq!(blocked.await.ok(), Some(Err(4)));
    }

    #[test]
    fn a_drained_burst_frees_a_large_buffer_and_keeps_a_small_one() {
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            assert_eq!(tx.try_send(i, ANY), Ok(()));
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.shared.state().rest.capacity(), 0, "500 slots freed");
        for i in 0..10 {
            assert_eq!(tx.try_send(i, ANY), Ok(()));
        }
        while rx.try_recv().is_ok() {}
        let kept = tx.shared.state().rest.capacity();
        assert!(
            (9..=KEPT_SLOTS).contains(&kept),
            "kept for the next burst: {kept}"
        );
        assert_eq!(tx.try_send(1, ANY), Ok(()));
        rx.free_spare();
        assert_eq!(tx.shared.state().rest.capacity(), 0, "freed once quiet");
        assert_eq!(rx.try_recv(), Ok(1), "the first slot is not touched");
    }

    #[test]
    fn order_holds_across_the_first_slot_and_the_rest() {
        let (tx, mut rx) = channel(8);
        let mut expected = Vec::new();
        let mut got = Vec::new();
        for round in 0..5 {
            for i in 0..round {
                let item = round * 10 + i;
                assert_eq!(tx.try_send(item, ANY), Ok(()));
                expected.push(item);
            }
            // Take one less than was queued, so the slot and the rest mix.
            for _ in 1..round {
                got.extend(rx.try_recv().ok());
            }
        }
        while let Ok(item) = rx.try_recv() {
            got.push(item);
        }
        assert_eq!(got, expected);
        assert_eq!(tx.queued_bytes(), 0, "every byte counted out");
    }

    #[test]
    fn bytes_bound_pushes_but_not_replies() {
        let (tx, mut rx) = channel(8);
        assert_eq!(tx.try_send(60, 100), Ok(()));
        assert_eq!(tx.try_send(60, 100), Ok(()), "60 queued is within 100");
        assert_eq!(tx.queued_bytes(), 120);
        assert_eq!(tx.try_send(1, 100), Err(TrySendError::TooManyBytes(1)));
        assert_eq!(tx.queued_bytes(), 120, "a refused push counts nothing");
        assert_eq!(
            futures_util::FutureExt::now_or_never(tx.send(7)),
            Some(Ok(())),
            "a reply is taken past the bound"
        );
        assert_eq!(tx.queued_bytes(), 127);
        assert_eq!(rx.try_recv(), Ok(60));
        assert_eq!(tx.queued_bytes(), 67);
        assert_eq!(tx.try_send(1, 100), Ok(()));
    }

    #[test]
    fn a_sealed_queue_refuses_pushes_once_sealed_and_still_takes_replies() {
        let (tx, mut rx) = channel(8);
        assert_eq!(tx.try_send(1, ANY), Ok(()));
        assert!(!rx.is_sealed());
        assert!(tx.seal(), "sealed now");
        assert!(!tx.seal(), "already sealed");
        assert!(tx.is_sealed() && rx.is_sealed());
        assert_eq!(tx.try_send(2, ANY), Err(TrySendError::Sealed(2)));
        assert_eq!(
            futures_util::FutureExt::now_or_never(tx.send(3)),
            Some(Ok(()))
        );
        assert!(!rx.is_empty());
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(3));
        assert!(rx.is_empty());
    }
}
