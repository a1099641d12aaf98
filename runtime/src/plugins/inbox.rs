//! [`Inbox`]: where a connection's pool calls end. A plugin's completion,
//! from whatever thread gives it, is pushed here under the call's
//! [`CallKey`], and the connection's task is woken once for all the calls
//! that end before it next looks.
//!
//! It stands in for a channel and a future per call: a call answered this
//! way costs its connection no allocation (the queue keeps its capacity),
//! no per-call waker, and no poll of its own. A producer wakes the
//! connection only when it finds the queue empty: the connection takes the
//! whole queue each time it looks, so a push onto a queue not yet taken
//! is seen with the one before it.

use super::replies::Completion;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Context;

/// Which call of its connection a completion ends: a place in the
/// connection's table of waiting calls, and the call's number there (a
/// place is used again; a late completion for a call that gave up names a
/// number no longer waiting, and is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallKey {
    /// The call's place in the table.
    pub(crate) place: u32,
    /// The call's number, unique among the connection's calls.
    pub(crate) number: u32,
}

/// How a call in the inbox ended: the plugin's completion, or `None` if
/// the question never reached the plugin or it let go of the handle.
pub(crate) type Ended = (CallKey, Option<Completion>);

/// One connection's completed pool calls, waiting to be answered.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// The connection's task, woken when the queue stops being empty.
    reader: AtomicWaker,
}

#[derive(Debug, Default)]
struct State {
    ended: VecDeque<Ended>,
    /// The connection has gone and nothing will take completions: they
    /// are dropped as they come.
    closed: bool,
}

impl Inbox {
    /// Queues a call's end, and wakes the connection if the queue was
    /// empty. Dropped if the connection has gone.
    pub(crate) fn push(&self, ended: Ended) {
        let mut state = lock(&self.state);
        if state.closed {
            return;
        }
        let first = state.ended.is_empty();
        state.ended.push_back(ended);
        drop(state);
        if first {
            self.reader.wake();
        }
    }

    /// Moves every queued end into `into` (which must be empty; the two
    /// queues swap, so both keep their capacity), having first arranged
    /// for the task of `cx` to be woken by the next push.
    pub(crate) fn take_all(&self, cx: &Context<'_>, into: &mut VecDeque<Ended>) {
        self.reader.register(cx.waker());
        let mut state = lock(&self.state);
        if !state.ended.is_empty() {
            std::mem::swap(&mut state.ended, into);
        }
    }

    /// The connection has gone: completions from now on are dropped, and
    /// any queued are let go.
    pub(crate) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        state.ended = VecDeque::new();
    }
}

#[cfg(test)]
impl Inbox {
    /// Whether [`Inbox::close`] has been called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// How many ends are queued.
    pub(crate) fn queued(&self) -> usize {
        lock(&self.state).ended.len()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics under this lock but a failed allocation: the queue
    // is still whole.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn ended(number: u32) -> Ended {
        (CallKey { place: 0, number }, None)
    }

    #[test]
    fn a_push_onto_an_empty_queue_wakes_once_for_all_that_follow() {
        let inbox = Inbox::default();
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let cx = Context::from_waker(&waker);
        let mut taken = VecDeque::new();
        inbox.take_all(&cx, &mut taken);
        assert!(taken.is_empty());
        inbox.push(ended(1));
        inbox.push(ended(2));
        inbox.push(ended(3));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one wake for three");
        inbox.take_all(&cx, &mut taken);
        let numbers: Vec<u32> = taken.drain(..).map(|(key, _)| key.number).collect();
        assert_eq!(numbers, [1, 2, 3], "in the order they came");
        inbox.push(ended(4));
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "empty again: woken");
    }

    #[test]
    fn a_push_before_the_first_look_is_found_by_it() {
        let inbox = Inbox::default();
        inbox.push(ended(7));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut taken = VecDeque::new();
        inbox.take_all(&Context::from_waker(&waker), &mut taken);
        assert_eq!(taken.len(), 1);
    }

    #[test]
    fn a_closed_inbox_drops_what_comes() {
        let inbox = Inbox::default();
        inbox.push(ended(1));
        inbox.close();
        inbox.push(ended(2));
        let waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        let mut taken = VecDeque::new();
        inbox.take_all(&Context::from_waker(&waker), &mut taken);
        assert!(taken.is_empty());
    }
}
