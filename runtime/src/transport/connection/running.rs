//! [`Running`]: the calls a connection answers off its task (on the action
//! pool, or later by an inline action). The connection's task keeps them
//! and polls them itself, with no task of their own: a call that ends
//! wakes the connection, which then writes the replies of every call ended
//! by then and flushes them once.
//!
//! The set also keeps its calls' deadlines swept: a sweep polls every call
//! again, woken or not, [`SWEPT_EVERY`] after the last, while calls come;
//! so a call is polled again within that time of its first poll. A call
//! dispatched for the set ([`Keeper::RunningSet`](crate::rpc::dispatch::Keeper))
//! starts its deadline's timer only at that second poll, if it has not
//! ended by then: the common call, answered within microseconds, never
//! touches the timer wheel. One timer per connection, reset once per
//! sweep, stands in for one per call. Sweeps stop two periods after the
//! last call came (by then every call has started its own timer), so a
//! connection waiting on slow calls is not woken ten times a second.

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
    set: FuturesUnordered<Call>,
    /// When the next sweep is due.
    sweep: Pin<Box<Sleep>>,
    /// Whether `sweep` is set for a sweep to come.
    sweep_set: bool,
    /// Whether `sweep` has been polled (so will wake the task) since it
    /// was last set, or moved to another task.
    sweep_polled: bool,
    /// Sweeps still owed: two after the last call came (the first polls
    /// again every call first polled before it; the second, calls first
    /// polled by the first).
    sweeps_owed: u8,
}

impl Running {
    /// Keeps `call` until it ends.
    pub(super) fn push(&mut self, call: Call) {
        let calls = self.0.get_or_insert_with(|| {
            Box::new(Calls {
                set: FuturesUnordered::new(),
                sweep: Box::pin(tokio::time::sleep_until(Instant::now() + SWEPT_EVERY)),
                sweep_set: true,
                sweep_polled: false,
                sweeps_owed: 2,
            })
        });
        calls.sweeps_owed = 2;
        if !calls.sweep_set {
            calls.set_sweep();
        }
        calls.set.push(call);
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

    /// Sweeps if a sweep is due: every call is polled again at the set's
    /// next poll, woken or not (each is taken out and put back, which
    /// queues it to be polled), and the next sweep is set while any is
    /// owed. The timer is polled only when it is new or has fired (a poll
    /// registers the task's waker again, which cost more per call than
    /// the timers this sweep saves).
    fn sweep_when_due(&mut self, cx: &mut Context<'_>) {
        if !self.sweep_set || (self.sweep_polled && !self.sweep.is_elapsed()) {
            return;
        }
        self.sweep_polled = true;
        if self.sweep.as_mut().poll(cx).is_pending() {
            return;
        }
        for call in std::mem::take(&mut self.set) {
            self.set.push(call);
        }
        self.sweeps_owed = self.sweeps_owed.saturating_sub(1);
        self.sweep_set = false;
        if self.sweeps_owed > 0 {
            self.set_sweep();
            // Pending: polled so that it wakes the task.
            let _ = self.sweep.as_mut().poll(cx);
            self.sweep_polled = true;
        }
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
        running.push(call_answering(first_rx));
        running.push(call_answering(second_rx));
        running.push(call_answering(third_rx));
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
        running.push(call_answering(rx));
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
        running.push(call_answering(rx));
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
        running.push(Box::pin(async move {
            rx.await.ok();
            ended_tx.send(()).ok();
            None
        }));
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

    #[tokio::test]
    async fn a_call_that_is_never_woken_is_polled_again_by_a_sweep() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        running.push(call_ending_at_second_poll(Arc::clone(&polls)));
        assert_eq!(running.answer_now().await, None, "pending at first");
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("swept".to_owned())));
        assert!(started.elapsed() <= Duration::from_secs(10));
        assert!(running.is_empty());
        // A set emptied and used again keeps sweeping.
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_ending_at_second_poll(Arc::clone(&polls)));
        let answer = tokio::time::timeout(Duration::from_secs(10), running.next_answer()).await;
        assert_eq!(answer.ok(), Some(Some("swept".to_owned())));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn calls_left_running_are_still_swept_on_their_new_task() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let (ended_tx, ended_rx) = oneshot::channel();
        let counted = Arc::clone(&polls);
        let mut inner = call_ending_at_second_poll(counted);
        let mut ended_tx = Some(ended_tx);
        running.push(Box::pin(std::future::poll_fn(move |cx| {
            let answer = inner.as_mut().poll(cx);
            if answer.is_ready()
                && let Some(tx) = ended_tx.take()
            {
                tx.send(()).ok();
            }
            answer
        })));
        assert_eq!(running.answer_now().await, None, "pending at first");
        running.finish_detached();
        let ended = tokio::time::timeout(Duration::from_secs(10), ended_rx).await;
        assert!(
            matches!(ended, Ok(Ok(()))),
            "swept and ended on the new task"
        );
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    /// A call that never ends and registers no waker, counting its polls.
    fn call_never_ending(polls: Arc<AtomicUsize>) -> Call {
        Box::pin(std::future::poll_fn(move |_cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            Poll::Pending
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn sweeps_stop_two_periods_after_the_last_call_and_resume_with_the_next() {
        let mut running = Running::default();
        let polls = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&polls)));
        // The clock is paused: it runs on while the task waits, so a second
        // is ten sweep periods.
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err(), "the call never ends");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "its first poll, then two sweeps, then none"
        );
        let later = Arc::new(AtomicUsize::new(0));
        running.push(call_never_ending(Arc::clone(&later)));
        let waited = tokio::time::timeout(Duration::from_secs(1), running.next_answer()).await;
        assert!(waited.is_err());
        assert_eq!(later.load(Ordering::SeqCst), 3, "swept twice after it came");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            5,
            "the first call is swept along with it"
        );
    }
}
