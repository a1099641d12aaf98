//! [`after_ready_tasks`]: a wait that ends once the tasks the runtime has
//! ready now have had their turn, however often the waiting task is woken
//! meanwhile. A connection whose calls run on the action pool waits so
//! before flushing: the replies of calls answered together then reach its
//! socket in one write, not one write each.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Waits until the tasks ready to run when this is first polled have run.
///
/// A plain `yield_now` ends at the task's next poll, and a task whose
/// replies come from other tasks is polled again at each reply (in
/// tokio, a task woken by the running one runs next): it would flush
/// after the first of them. Here the yield is made with a waker of our
/// own, so the wait ends only when the scheduler itself comes back to it.
pub(super) async fn after_ready_tasks() {
    let mut yielded = pin!(tokio::task::yield_now());
    let mut turn: Option<Arc<Turn>> = None;
    std::future::poll_fn(|cx| match &turn {
        Some(turn) if turn.passed.load(Ordering::Acquire) => Poll::Ready(()),
        Some(_) => Poll::Pending,
        None => {
            let new = Arc::new(Turn {
                passed: AtomicBool::new(false),
                task: cx.waker().clone(),
            });
            let waker = Waker::from(Arc::clone(&new));
            if yielded
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(());
            }
            turn = Some(new);
            Poll::Pending
        }
    })
    .await;
}

/// The waker the yield is made with: marks the turn as come, then wakes
/// the waiting task.
struct Turn {
    passed: AtomicBool,
    task: Waker,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.passed.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_wait_outlasts_wakes_from_tasks_ready_before_it() {
        // Ten tasks are ready when the wait begins, and each wakes the
        // waiting task (which then runs next, in tokio's LIFO slot): a
        // plain yield would end at the first of those wakes, this wait
        // only once all ten have run.
        let ran = Arc::new(AtomicUsize::new(0));
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let waiting = tokio::task::spawn({
            let (ran, waker) = (Arc::clone(&ran), Arc::clone(&waker));
            async move {
                // Spawned from the worker while this task runs: queued on
                // it, and none runs before the wait begins.
                for _ in 0..10 {
                    let (ran, waker) = (Arc::clone(&ran), Arc::clone(&waker));
                    drop(tokio::task::spawn(async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        let waiting = waker.lock().ok().and_then(|w| w.clone());
                        if let Some(waiting) = waiting {
                            waiting.wake();
                        }
                    }));
                }
                let mut wait = pin!(after_ready_tasks());
                let mut polls = 0;
                std::future::poll_fn(|cx| {
                    polls += 1;
                    if let Ok(mut slot) = waker.lock() {
                        *slot = Some(cx.waker().clone());
                    }
                    wait.as_mut().poll(cx)
                })
                .await;
                (ran.load(Ordering::SeqCst), polls)
            }
        });
        let (ran_before_the_end, polls) = waiting.await.unwrap_or_default();
        assert_eq!(ran_before_the_end, 10);
        assert!(
            polls > 2,
            "the waiting task was not woken meanwhile ({polls} polls)"
        );
    }
}
