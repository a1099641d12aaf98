//! [`Running`]: the calls a connection answers off its task (on the action
//! pool, or later by an inline action). The connection's task keeps them
//! and polls them itself, with no task of their own: a call that ends
//! wakes the connection, which then writes the replies of every call ended
//! by then and flushes them once.
//!
//! The set also sweeps its calls' deadlines. A call dispatched while the
//! set is busy ([`Keeper::RunningSet`](crate::rpc::dispatch::Keeper)) is
//! pushed as swept: it starts its deadline's timer only at its second
//! poll, if it has not ended by then, and the set promises that second
//! poll: a sweep polls every call again, woken or not, [`SWEPT_EVERY`]
//! after the sweep was set, and sweeps go on while any swept call has been
//! polled fewer than twice. The common call, answered within microseconds,
//! never touches the timer wheel; one timer per connection, set once per
//! sweep, stands in for one per call, and a connection left waiting on
//! slow calls is swept no more once each has its timer.

use crate::rpc::dispatch::SWEPT_EVERY;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// A call (or a batch) answered off the task: its reply, or none (a
/// notification).
pub(super) type Call = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// A connection's calls answered off its task. Nothing is allocated until
/// the first, and the set is let go at a heartbeat that finds it empty.
#[derive(Default)]
pub(super) struct Running(Option<Box<Calls>>);

/// The calls, and the sweep that polls them all.
struct Calls {
    set: FuturesUnordered<Kept>,
    /// When the next sweep is due, while `sweep_set`.
    sweep: Pin<Box<Sleep>>,
    /// Whether `sweep` is set for a sweep to come.
    sweep_set: bool,
    /// Whether `sweep` has been polled (so will wake the task) since it
    /// was last set, or moved to another task.
    sweep_polled: bool,
}

/// A call as the set keeps it: how often it has been polled, and whether
/// the set owes it a second poll.
struct Kept {
    call: Call,
    /// Pushed as swept: its deadline's timer starts at its second poll.
    swept: bool,
    /// Polls so far (counted to two).
    polls: u8,
}

impl Future for Kept {
    type Output = Option<String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls = self.polls.saturating_add(1).min(2);
        self.call.as_mut().poll(cx)
    }
}

impl Running {
    /// Keeps `call` until it ends; `swept`: it was dispatched for the set
    /// ([`Keeper::RunningSet`](crate::rpc::dispatch::Keeper)), and is owed
    /// a second poll within [`SWEPT_EVERY`].
    pub(super) fn push(&mut self, call: Call, swept: bool) {
        let calls = self.0.get_or_insert_with(|| {
            Box::new(Calls {
                set: FuturesUnordered::new(),
                sweep: Box::pin(tokio::time::sleep_until(Instant::now() + SWEPT_EVERY)),
                sweep_set: swept,
                sweep_polled: false,
            })
        });
        if swept && !calls.sweep_set {
            calls.set_sweep();
        }
        calls.set.push(Kept {
            call,
            swept,
            polls: 0,
        });
    }

    /// Whether no call is running and no sweep is set: a call now is the
    /// first in a while, and better keeps its own timer than sets a sweep.
    pub(super) fn is_quiet(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|calls| calls.set.is_empty() && !calls.sweep_set)
    }

    /// Whether no call is running.
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|calls| calls.set.is_empty())
    }

    /// The answer of the next call to end; pending for ever while none
    /// runs (a wait that ends on something else).
    pub(super) fn next_answer(&mut self) -> impl Future<Output = Option<String>> + '_ {
        std::future::poll_fn(move |cx| self.poll_answer(cx))
    }

    /// The answer of a call that has ended by now, if any: `None` when
    /// none has (the task is woken when one does).
    pub(super) async fn answer_now(&mut self) -> Option<Option<String>> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match self.poll_answer(cx) {
                Poll::Ready(answer) => Some(answer),
                Poll::Pending => None,
            })
        })
        .await
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let Some(calls) = self.0.as_deref_mut() else {
            return Poll::Pending;
        };
        if calls.set.is_empty() {
            // Nothing to sweep: a sweep still set is let go (its timer may
            // wake the task once more), so the next call finds the set
            // quiet and keeps its own timer.
            calls.sweep_set = false;
            return Poll::Pending;
        }
        calls.sweep_when_due(cx);
        match calls.set.poll_next_unpin(cx) {
            Poll::Ready(Some(answer)) => Poll::Ready(answer),
            // Empty (checked above), or more ended than one poll
            // takes (the set woke the task to come back).
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Lets go of the set while no call runs (a connection that stopped
    /// calling pool actions keeps no memory for them).
    pub(super) fn free_if_idle(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    /// The connection has ended: the calls still running finish on a task
    /// of their own, their deadlines still swept. Their replies go
    /// nowhere, but each is counted and timed as usual, reports its
    /// failure to lifecycle listeners, and frees its call slots when it
    /// ends, as if the client had stayed.
    pub(super) fn finish_detached(mut self) {
        if let Some(calls) = self.0.as_deref_mut() {
            // Polled again, to wake the new task, not this one.
            calls.sweep_polled = false;
        }
        if !self.is_empty() {
            tokio::spawn(async move {
                while !self.is_empty() {
                    self.next_answer().await;
                }
            });
        }
    }
}

impl Calls {
    /// Sets the next sweep, [`SWEPT_EVERY`] from now.
    fn set_sweep(&mut self) {
        self.sweep.as_mut().reset(Instant::now() + SWEPT_EVERY);
        self.sweep_set = true;
        self.sweep_polled = false;
    }

    /// Polls the sweep's timer outside tokio's task budget: a poll the
    /// budget refused would register no waker, and the timer is not
    /// polled again until it has fired (a poll registers the task's waker
    /// again, which cost more per call than the timers the sweep saves).
    fn poll_sweep(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.sweep_polled = true;
        Pin::new(&mut tokio::task::unconstrained(self.sweep.as_mut())).poll(cx)
    }

    /// Sweeps if a sweep is due: every call is polled again at the set's
    /// next poll, woken or not (each is taken out and put back, which
    /// queues it to be polled), and the next sweep is set while a swept
    /// call is still owed its second poll.
    fn sweep_when_due(&mut self, cx: &mut Context<'_>) {
        if !self.sweep_set || (self.sweep_polled && !self.sweep.is_elapsed()) {
            return;
        }
        if self.poll_sweep(cx).is_pending() {
            return;
        }
        self.sweep_set = false;
        if !self.set.iter().any(|kept| kept.swept && kept.polls < 2) {
            // Every swept call has started its timer, or ended.
            return;
        }
        for kept in std::mem::take(&mut self.set) {
            self.set.push(kept);
        }
        self.set_sweep();
        // Pending: polled so that it wakes the task.
        let _ = self.poll_sweep(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    fn call_answering(rx: oneshot::Receiver<&'static str>) -> Call {
        Box::pin(async move { rx.await.ok().map(str::to_owned) })
    }

    #[tokio::test]
    async fn calls_ended_together_are_all_answered_without_waiting() {
        let mut running = Running::default();
        assert!(running.is_empty());
        assert_eq!(running.answer_now().await, None, "nothing runs");
        let (first_tx, first_rx) = oneshot::channel();
        let (second_tx, second_rx) = oneshot::channel();
        let (third_tx, third_rx) = oneshot::channel::<&'static str>();
        running.push(call_answering(first_rx), false);
        running.push(call_answering(second_rx), false);
        running.push(call_answering(third_rx), false);
        assert_eq!(running.answer_now().await, None, "none has ended yet");
        second_tx.send("second").ok();
        first_tx.send("first").ok();
        let mut answered = vec![];
        while let Some(answer) = running.answer_now().await {
            answered.push(answer);
        }
        answered.sort();
        assert_eq!(
            answered,
            [Some("first".to_owned()), Some("second".to_owned())]
        );
        assert!(!running.is_empty(), "the third still runs");
        drop(third_tx);
        assert_eq!(running.next_answer().await, None, "a notification's answer");
        assert!(running.is_empty());
    }

    #[tokio::test]
    async fn the_wait_for_an_answer_ends_when_a_call_ends_later() {
        let mut running = Running::default();
        let (tx, rx) = oneshot::channel();
        running.push(call_answering(rx), false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send("late").ok();
        });
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("late".to_owned())));
    }

    #[tokio::test]
    async fn an_empty_set_waits_and_is_let_go_when_idle() {
        let mut running = Running::default();
        let waited = tokio::time::timeout(Duration::from_millis(20), running.next_answer()).await;
        assert!(
            waited.is_err(),
            "no call runs: the wait never ends by itself"
        );
        let (tx, rx) = oneshot::channel();
        running.push(call_answering(rx), false);
        running.free_if_idle();
        assert!(running.0.is_some(), "a call runs: the set is kept");
        tx.send("done").ok();
        assert_eq!(running.next_answer().await, Some("done".to_owned()));
        running.free_if_idle();
        assert!(running.0.is_none());
    }

    #[tokio::test]
    async fn calls_left_running_when_the_connection_ends_still_finish() {
        let mut running = Running::default();
        let (tx, rx) = oneshot::channel::<()>();
        let (ended_tx, ended_rx) = oneshot::channel();
        running.push(
            Box::pin(async move {
                rx.await.ok();
                ended_tx.send(()).ok();
                None
            }),
            false,
        );
        running.finish_detached();
        tx.send(()).ok();
        let ended = tokio::time::timeout(Duration::from_secs(10), ended_rx).await;
        assert!(matches!(ended, Ok(Ok(()))), "the call ran to its end");
    }

    /// A call that finds nothing on its first poll and ends at its second,
    /// never registering a waker: only a sweep polls it again.
    fn call_ending_at_second_poll(polls: Arc<AtomicUsize>) -> Call {
        Box::pin(std::future::poll_fn(move |_cx| {
            if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                Poll::Pending
            } else {
                Poll::Ready(Some("swept".to_owned()))
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_is_never_woken_is_polled_again_by_a_sweep() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        running.push(call_ending_at_second_poll(Arc::clone(&polls)), true);
        assert!(!running.is_quiet(), "a sweep is set");
        assert_eq!(running.answer_now().await, None, "pending at first");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("swept".to_owned())));
        // The clock is paused: it moves only to the next timer, so this is
        // exactly when the sweep came.
        let waited = started.elapsed();
        assert!(
            waited >= SWEPT_EVERY && waited <= SWEPT_EVERY + Duration::from_millis(2),
            "{waited:?}"
        );
        assert!(running.is_empty());
        // A set emptied and used again keeps sweeping.
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_ending_at_second_poll(Arc::clone(&polls)), true);
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("swept".to_owned())));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_swept_call_first_polled_late_still_gets_its_second_poll() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&polls)), true);
        // Not polled at all until well past the sweep (a connection busy
        // writing to a slow client): the overdue sweep is its first poll.
        tokio::time::advance(3 * SWEPT_EVERY).await;
        assert_eq!(running.answer_now().await, None);
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled first by the sweep");
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err(), "the call never ends");
        assert_eq!(polls.load(Ordering::SeqCst), 2, "then swept once more");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_not_swept_set_no_sweep() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&polls)), false);
        assert!(!sweep_set(&running), "only a swept call sets a sweep");
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "woken by nothing, polled once"
        );
    }

    #[tokio::test]
    async fn calls_left_running_are_still_swept_on_their_new_task() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let (ended_tx, ended_rx) = oneshot::channel();
        let counted = Arc::clone(&polls);
        let mut inner = call_ending_at_second_poll(counted);
        let mut ended_tx = Some(ended_tx);
        running.push(
            Box::pin(std::future::poll_fn(move |cx| {
                let answer = inner.as_mut().poll(cx);
                if answer.is_ready()
                    && let Some(tx) = ended_tx.take()
                {
                    tx.send(()).ok();
                }
                answer
            })),
            true,
        );
        assert_eq!(running.answer_now().await, None, "pending at first");
        running.finish_detached();
        let ended = tokio::time::timeout(Duration::from_secs(10), ended_rx).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "swept and ended on the new task"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// Whether the set has a sweep to come.
    fn sweep_set(running: &Running) -> bool {
        running.0.as_ref().is_some_and(|calls| calls.sweep_set)
    }

    /// A call that never ends and registers no waker, counting its polls.
    fn call_never_ending(polls: Arc<AtomicUsize>) -> Call {
        Box::pin(std::future::poll_fn(move |_cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            Poll::Pending
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_stop_once_every_swept_call_has_had_its_second_poll() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&polls)), true);
        // The clock is paused: it runs on while the task waits, so a second
        // is ten sweep periods.
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err(), "the call never ends");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "its first poll, then one sweep (its timer would start there), then none"
        );
        assert!(!sweep_set(&running), "no sweep is set any more");
        let later = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&later)), true);
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err());
        assert_eq!(later.load(Ordering::SeqCst), 2, "swept once after it came");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "the first call is swept along with it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_set_found_empty_lets_its_sweep_go_and_is_quiet_again() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_ending_at_second_poll(Arc::clone(&polls)), true);
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("swept".to_owned())));
        assert!(running.is_empty());
        assert!(sweep_set(&running), "the sweep that ended it set the next");
        assert_eq!(running.answer_now().await, None, "nothing runs");
        assert!(
            running.is_quiet(),
            "a call made now keeps its own timer, and sets no sweep"
        );
    }
}
