//! [`Running`]: the calls a connection answers off its task: pool calls
//! waiting for their plugins, and calls that are futures of their own (a
//! batch, an inline action answering later, a room call in its lane). The
//! connection's task keeps them and polls them itself, with no task of
//! their own: a call that ends wakes the connection, which then writes the
//! replies of every call ended by then and flushes them once.
//!
//! A pool call is not a future: it is started with its answer going to
//! the set's [`Inbox`], and kept as what answering it takes
//! ([`Waiting`]), under a key. One lock and one swap take every call
//! ended since the last look. Their deadlines share one timer, set for
//! the earliest: calls of one action come in deadline order, so the timer
//! is set again only when it fires (the calls it was set for have long
//! ended, usually) or a call with a shorter deadline comes. The common
//! call, answered within microseconds, allocates nothing here and never
//! touches the timer wheel.

use crate::plugins::inbox::{CallKey, Ended, Inbox};
use crate::plugins::invoke::{PluginFault, read};
use crate::plugins::replies::PendingReply;
use crate::rpc::dispatch::{PoolCall, Waiting};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::time::Sleep;

/// A call (or a batch) answered by a future of its own: its reply, or
/// none (a notification).
pub(super) type Call = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// A connection's calls answered off its task. Nothing is allocated until
/// the first, and the set is let go at a heartbeat that finds it empty.
#[derive(Default)]
pub(super) struct Running(Option<Box<Calls>>);

/// The calls.
struct Calls {
    /// Calls that are futures of their own.
    set: FuturesUnordered<Call>,
    /// Pool calls waiting for their plugins, by place.
    places: Vec<Place>,
    /// Places free to use again.
    free: Vec<u32>,
    /// Pool calls waiting.
    waiting: usize,
    /// The number the next pool call gets.
    next_number: u32,
    /// Where the plugins' completions come.
    inbox: Arc<Inbox>,
    /// Completions taken from the inbox, answered one per poll.
    ended: VecDeque<Ended>,
    /// When they were taken: the end of each of their calls, for its
    /// action's latency (one clock read for all of them).
    taken_at: Option<Instant>,
    /// Calls whose deadlines have passed, answered one per poll.
    overdue: Vec<CallKey>,
    /// The deadlines' timer, set for `timer_at` (none: not set).
    timer: Option<Pin<Box<Sleep>>>,
    /// When the timer fires; no waiting call's deadline is earlier.
    timer_at: Option<Instant>,
    /// Whether the timer has been polled (so will wake the task) since
    /// it was last set, or moved to another task.
    timer_polled: bool,
    /// Whether the next poll looks at `set` before the pool calls (the
    /// two take turns, so a stream of either never holds up the other).
    set_first: bool,
}

/// One place in the table of waiting pool calls.
struct Place {
    /// The number of the call here (or last here).
    number: u32,
    /// The call, while it waits; and its deadline.
    call: Option<(Waiting, Option<Instant>)>,
}

impl Drop for Calls {
    fn drop(&mut self) {
        // Completions coming after this are dropped as they come.
        self.inbox.close();
    }
}

impl Running {
    /// Keeps `call` until it ends.
    pub(super) fn push(&mut self, call: Call) {
        self.calls().set.push(call);
    }

    /// Starts a pool call, its answer to come to this set.
    pub(super) fn start(&mut self, call: PoolCall) {
        let calls = self.calls();
        let deadline = call.deadline();
        let number = calls.next_number;
        calls.next_number = number.wrapping_add(1);
        let place = match calls.free.pop() {
            Some(place) => place,
            None => {
                calls.places.push(Place { number, call: None });
                // At most the calls waiting at once (each within its
                // deadline): far below what a `u32` counts.
                u32::try_from(calls.places.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let key = CallKey { place, number };
        let waiting = call.start(PendingReply::into_inbox(Arc::clone(&calls.inbox), key));
        if let Some(slot) = calls.places.get_mut(place as usize) {
            *slot = Place {
                number,
                call: Some((waiting, deadline)),
            };
            calls.waiting += 1;
        }
        if let Some(deadline) = deadline
            && calls.timer_at.is_none_or(|at| deadline < at)
        {
            calls.set_timer(deadline);
        }
    }

    fn calls(&mut self) -> &mut Calls {
        self.0.get_or_insert_with(|| {
            Box::new(Calls {
                set: FuturesUnordered::new(),
                places: Vec::new(),
                free: Vec::new(),
                waiting: 0,
                next_number: 0,
                inbox: Arc::new(Inbox::default()),
                ended: VecDeque::new(),
                taken_at: None,
                overdue: Vec::new(),
                timer: None,
                timer_at: None,
                timer_polled: false,
                set_first: false,
            })
        })
    }

    /// Whether no call is running.
    pub(super) fn is_empty(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|calls| calls.set.is_empty() && calls.waiting == 0)
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
        let set_first = calls.set_first && !calls.set.is_empty();
        calls.set_first = !calls.set_first;
        if set_first && let Some(answer) = calls.set_answer(cx) {
            return Poll::Ready(answer);
        }
        if let Some(answer) = calls.pool_answer(cx) {
            return Poll::Ready(answer);
        }
        if !set_first && let Some(answer) = calls.set_answer(cx) {
            return Poll::Ready(answer);
        }
        Poll::Pending
    }

    /// Lets go of the set while no call runs (a connection that stopped
    /// calling actions keeps no memory for them).
    pub(super) fn free_if_idle(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }

    /// The connection has ended: the calls still running finish on a task
    /// of their own, their deadlines still kept. Their replies go
    /// nowhere, but each is counted and timed as usual, reports its
    /// failure to lifecycle listeners, and frees its call slots when it
    /// ends, as if the client had stayed.
    pub(super) fn finish_detached(mut self) {
        if let Some(calls) = self.0.as_deref_mut() {
            // Polled again, to wake the new task, not this one.
            calls.timer_polled = false;
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
    /// The answer of a call of `set` that has ended by now, if any.
    fn set_answer(&mut self, cx: &mut Context<'_>) -> Option<Option<String>> {
        if self.set.is_empty() {
            return None;
        }
        match self.set.poll_next_unpin(cx) {
            Poll::Ready(Some(answer)) => Some(answer),
            // Empty (checked above), or more ended than one poll takes
            // (the set woke the task to come back).
            Poll::Ready(None) | Poll::Pending => None,
        }
    }

    /// The answer of a pool call that has ended (or passed its deadline)
    /// by now, if any: `Some(None)` for a notification's. Deadlines are
    /// checked before each answer, so a steady stream of answers never
    /// holds up a call's timeout.
    fn pool_answer(&mut self, cx: &mut Context<'_>) -> Option<Option<String>> {
        if self.waiting == 0 {
            self.drop_late_answers(cx);
            return None;
        }
        loop {
            if let Some(key) = self.overdue.pop() {
                if let Some((waiting, _)) = self.take_waiting(key) {
                    return Some(waiting.timed_out());
                }
                continue;
            }
            if self.deadlines_passed(cx) {
                continue;
            }
            if let Some((key, done)) = self.ended.pop_front() {
                // A call that timed out already is answered; its late
                // completion is dropped.
                if let Some((waiting, _)) = self.take_waiting(key) {
                    let answer = done.map_or(Err(PluginFault::NotAsked), read);
                    let ended = self.taken_at.unwrap_or_else(Instant::now);
                    return Some(waiting.answered(answer, ended));
                }
                continue;
            }
            if self.waiting == 0 {
                return None;
            }
            self.inbox.take_all(cx, &mut self.ended);
            if self.ended.is_empty() {
                return None;
            }
            self.taken_at = Some(Instant::now());
        }
    }

    /// With no call waiting, whatever is in the inbox answers calls that
    /// timed out: it is dropped now, not kept until the next call.
    fn drop_late_answers(&mut self, cx: &mut Context<'_>) {
        self.inbox.take_all(cx, &mut self.ended);
        self.ended.clear();
        self.overdue.clear();
    }

    /// The call waiting under `key`, taken out of its place.
    fn take_waiting(&mut self, key: CallKey) -> Option<(Waiting, Option<Instant>)> {
        let place = self.places.get_mut(key.place as usize)?;
        if place.number != key.number {
            return None;
        }
        let call = place.call.take()?;
        self.free.push(key.place);
        self.waiting -= 1;
        Some(call)
    }

    /// Sets the deadlines' timer for `at`.
    fn set_timer(&mut self, at: Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(at.into()),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(at.into()))),
        }
        self.timer_at = Some(at);
        self.timer_polled = false;
    }

    /// Whether the deadlines' timer has fired: then the calls past their
    /// deadlines are listed in `overdue`, and the timer set (and polled)
    /// for the earliest deadline left.
    fn deadlines_passed(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(timer) = self.timer.as_mut().filter(|_| self.timer_at.is_some()) else {
                return false;
            };
            if self.timer_polled && !timer.is_elapsed() {
                return false;
            }
            self.timer_polled = true;
            // Polled outside tokio's task budget: a poll the budget refused
            // would register no waker, and the timer would not be polled
            // again until it fired.
            if Pin::new(&mut tokio::task::unconstrained(timer.as_mut()))
                .poll(cx)
                .is_pending()
            {
                return false;
            }
            self.timer_at = None;
            // The timer's clock (tokio's, which a test may pause).
            let now = tokio::time::Instant::now().into_std();
            let mut earliest: Option<Instant> = None;
            for (place, slot) in self.places.iter().enumerate() {
                let Some((_, Some(deadline))) = &slot.call else {
                    continue;
                };
                if *deadline <= now {
                    self.overdue.push(CallKey {
                        place: u32::try_from(place).unwrap_or(u32::MAX),
                        number: slot.number,
                    });
                } else if earliest.is_none_or(|at| *deadline < at) {
                    earliest = Some(*deadline);
                }
            }
            if let Some(at) = earliest {
                // Polled at the top: it wakes the task when it fires.
                self.set_timer(at);
            }
            if !self.overdue.is_empty() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use std::sync::Arc;
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

    /// A running set over a server of the fake plugin, used as a
    /// connection uses it.
    struct Pool {
        server: crate::rpc::dispatch::tests::Server,
        session: crate::rpc::session::Session,
        running: Running,
    }

    impl Pool {
        /// Over the fake plugin's usual actions, `max_inflight` calls per
        /// connection.
        fn new(max_inflight: usize) -> Pool {
            Pool::over(crate::rpc::dispatch::tests::server(max_inflight))
        }

        fn over(server: crate::rpc::dispatch::tests::Server) -> Pool {
            let session = crate::rpc::dispatch::tests::session(&server.state, None);
            Pool {
                server,
                session,
                running: Running::default(),
            }
        }

        /// Starts a call of `method`, as a connection does.
        fn call(&mut self, method: &str, params: &str) {
            use crate::rpc::dispatch::{Dispatched, tests};
            let request = tests::request(method, params);
            let Dispatched::Pool(call) =
                tests::start_now(&self.server.state, &mut self.session, &request)
            else {
                panic!("{method} runs on the pool");
            };
            self.running.start(call);
        }

        /// The next answer, which must come within 10 s.
        async fn answer(&mut self) -> Option<String> {
            tokio::time::timeout(Duration::from_secs(10), self.running.next_answer())
                .await
                .expect("an answer within 10 s")
        }

        /// The set's inbox.
        fn inbox(&self) -> Arc<Inbox> {
            Arc::clone(&self.running.0.as_ref().expect("the set").inbox)
        }
    }

    fn error_code(reply: Option<String>) -> Option<i64> {
        let reply: serde_json::Value = serde_json::from_str(&reply?).ok()?;
        reply["error"]["code"].as_i64()
    }

    #[tokio::test]
    async fn pool_calls_are_answered_through_the_inbox() {
        let mut pool = Pool::new(8);
        for n in 0..3 {
            pool.call("t/echo", &format!("[{n}]"));
        }
        assert!(!pool.running.is_empty());
        let mut answered = vec![];
        for _ in 0..3 {
            answered.push(pool.answer().await.expect("a reply"));
        }
        answered.sort();
        assert_eq!(
            answered,
            (0..3)
                .map(|n| format!(r#"{{"jsonrpc":"2.0","id":7,"result":[{n}]}}"#))
                .collect::<Vec<_>>()
        );
        assert!(pool.running.is_empty());
        // The places are used again, under new numbers.
        pool.call("t/echo", "[3]");
        assert!(pool.answer().await.is_some_and(|r| r.contains("[3]")));
        let calls = pool.running.0.as_ref().expect("the set");
        assert_eq!(calls.places.len(), 3);
    }

    #[tokio::test]
    async fn a_shorter_deadline_than_the_timers_sets_it_earlier() {
        let mut pool = Pool::new(8);
        // The default deadline (30 s) sets the timer; the hang's 50 ms
        // comes after it, and must time out long before.
        pool.call("t/echo", "[1]");
        let started = Instant::now();
        pool.call("t/hang", "null");
        let mut codes = vec![];
        for _ in 0..2 {
            codes.push(error_code(pool.answer().await));
        }
        codes.sort();
        assert_eq!(codes, [None, Some(-32003)]);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(pool.running.is_empty());
        // Its late completion, if it ever came, would name a call no
        // longer waiting; a new call at the same place is answered as its
        // own.
        pool.call("t/echo", "[2]");
        assert!(pool.answer().await.is_some_and(|r| r.contains("[2]")));
    }

    #[tokio::test]
    async fn calls_timed_out_one_after_another_each_get_their_reply() {
        let mut pool = Pool::new(8);
        // Two calls of 50 ms deadlines, 20 ms apart: the timer fires for
        // the first, then is set again (and must wake the task) for the
        // second, with nothing else to wake it.
        pool.call("t/hang", "null");
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.call("t/hang", "null");
        for _ in 0..2 {
            assert_eq!(error_code(pool.answer().await), Some(-32003));
        }
        assert!(pool.running.is_empty());
    }

    #[tokio::test]
    async fn a_timer_that_fires_for_a_call_answered_since_is_set_for_the_next() {
        // An echo of 40 ms deadline sets the timer, and is answered at
        // once; a hang of 100 ms comes after it (the timer is not moved
        // later). The timer fires with nothing overdue, and is set again
        // for the hang, with nothing else to wake the task.
        let mut pool = Pool::over(crate::rpc::dispatch::tests::server_of(
            "name=t version=1 actions=t/echo!@40,t/refuse!,t/panic!,t/garbage!,t/hang!@100 code=1",
            8,
        ));
        pool.call("t/echo", "[1]");
        assert_eq!(error_code(pool.answer().await), None);
        pool.call("t/hang", "null");
        assert_eq!(error_code(pool.answer().await), Some(-32003));
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_answered_before_answers_queued_after() {
        let mut pool = Pool::new(16);
        pool.call("t/hang", "null");
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Past the hang's 50 ms deadline, eight answers queue up before
        // the set is looked at: the timeout comes first all the same.
        for n in 0..8 {
            pool.call("t/echo", &format!("[{n}]"));
        }
        let inbox = pool.inbox();
        let started = Instant::now();
        while inbox.queued() < 8 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the echoes never answered"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = pool.running.answer_now().await.expect("an answer now");
        assert_eq!(error_code(first), Some(-32003));
        for _ in 0..8 {
            let answer = pool.running.answer_now().await.expect("an echo's answer");
            assert_eq!(error_code(answer), None);
        }
        assert!(pool.running.is_empty());
    }

    #[tokio::test]
    async fn pool_calls_left_waiting_when_the_connection_ends_still_time_out() {
        let mut pool = Pool::new(8);
        pool.call("t/hang", "null");
        // Polled once here: the timer is registered with this task.
        assert_eq!(pool.running.answer_now().await, None);
        let inbox = pool.inbox();
        std::mem::take(&mut pool.running).finish_detached();
        // The new task times the call out (polling the timer afresh, with
        // its own waker), then ends, closing the inbox.
        let started = Instant::now();
        while !inbox.is_closed() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the detached call never timed out"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
