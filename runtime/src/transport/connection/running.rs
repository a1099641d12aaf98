//! [`Running`]: the calls a connection answers off its task (on the action
//! pool, or later by an inline action). The connection's task keeps them
//! and polls them itself, with no task of their own: a call that ends
//! wakes the connection, which then writes the replies of every call ended
//! by then and flushes them once.

use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A call (or a batch) answered off the task: its reply, or none (a
/// notification).
pub(super) type Call = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// A connection's calls answered off its task. Nothing is allocated until
/// the first, and the set is let go at a heartbeat that finds it empty.
#[derive(Default)]
pub(super) struct Running(Option<Box<FuturesUnordered<Call>>>);

impl Running {
    /// Keeps `call` until it ends.
    pub(super) fn push(&mut self, call: Call) {
        self.0.get_or_insert_default().push(call);
    }

    /// Whether no call is running.
    pub(super) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|calls| calls.is_empty())
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
        match self.0.as_deref_mut() {
            Some(calls) if !calls.is_empty() => match calls.poll_next_unpin(cx) {
                Poll::Ready(Some(answer)) => Poll::Ready(answer),
                // Empty (checked above), or more ended than one poll
                // takes (the set woke the task to come back).
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            },
            _ => Poll::Pending,
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
    /// of their own. Their replies go nowhere, but each is counted and
    /// timed as usual, reports its failure to lifecycle listeners, and
    /// frees its call slots when it ends, as if the client had stayed.
    pub(super) fn finish_detached(self) {
        if let Some(mut calls) = self.0
            && !calls.is_empty()
        {
            tokio::spawn(async move { while calls.next().await.is_some() {} });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
