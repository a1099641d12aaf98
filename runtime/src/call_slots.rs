//! Call slots: a bounded count of the plugin calls running, taken without
//! waiting and given back when the slot is dropped.
//!
//! The server holds one set (`max_inflight_calls`), every connection one of
//! its own (`max_inflight_per_connection`), and the auth chain one for its
//! hooks. A slot is taken as a call starts and travels with it to the
//! thread that runs it, so a call past its deadline keeps its slot until
//! the plugin returns. Nothing on a call's path ever waits for a slot: a
//! call that finds none is refused. So a slot is one atomic count, taken
//! with a compare-and-swap and given back with a subtraction (a tokio
//! `Semaphore`, used before, also took its waiters' lock on every give
//! back, twice per pool call). Only the server's shutdown waits, for every
//! slot to come back ([`CallSlots::all_free`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often [`CallSlots::all_free`] looks again: only a stopping server
/// waits, so no call pays for being waited on.
const ALL_FREE_CHECK: Duration = Duration::from_millis(10);

/// A bounded set of call slots (cloning shares the set).
#[derive(Debug, Clone)]
pub struct CallSlots(Arc<Count>);

/// The count behind a set and its slots.
#[derive(Debug)]
struct Count {
    /// Slots taken now.
    taken: AtomicUsize,
    /// Most slots that may be taken at once.
    limit: usize,
}

/// One taken slot; dropping it gives it back.
#[derive(Debug)]
#[must_use = "the slot is given back as soon as it is dropped"]
pub struct CallSlot(Arc<Count>);

impl CallSlots {
    /// A set of `limit` slots, none taken.
    pub fn new(limit: usize) -> CallSlots {
        CallSlots(Arc::new(Count {
            taken: AtomicUsize::new(0),
            limit,
        }))
    }

    /// A slot, or `None` when all `limit` are taken.
    pub fn try_take(&self) -> Option<CallSlot> {
        let count = &self.0;
        count
            .taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |taken| {
                (taken < count.limit).then_some(taken + 1)
            })
            .ok()?;
        Some(CallSlot(Arc::clone(count)))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.0.taken.load(Ordering::Acquire)
    }

    /// Returns once no slot is taken (checked every 10 ms). Slots may be
    /// taken again afterwards: the caller makes sure no new call starts.
    pub async fn all_free(&self) {
        while self.taken() > 0 {
            tokio::time::sleep(ALL_FREE_CHECK).await;
        }
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        // Release: whatever the call did happens before a shutdown that
        // sees its slot back (`taken` loads with Acquire).
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn slots_run_out_at_the_limit_and_come_back_when_dropped() {
        let slots = CallSlots::new(2);
        let first = slots.try_take().expect("a first slot");
        let second = slots.try_take().expect("a second slot");
        assert!(slots.try_take().is_none(), "a third slot past the limit");
        assert_eq!(slots.taken(), 2);
        drop(first);
        assert_eq!(slots.taken(), 1);
        let third = slots.try_take().expect("the slot given back");
        drop((second, third));
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn a_set_of_no_slots_refuses_every_call() {
        let slots = CallSlots::new(0);
        assert!(slots.try_take().is_none());
    }

    #[test]
    fn slots_taken_on_many_threads_never_pass_the_limit() {
        let slots = CallSlots::new(3);
        let most = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (slots, most) = (slots.clone(), Arc::clone(&most));
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(slot) = slots.try_take() {
                            most.fetch_max(slots.taken(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::Relaxed) <= 3);
        assert!(most.load(Ordering::Relaxed) >= 1);
        assert_eq!(slots.taken(), 0, "every slot came back");
    }

    #[tokio::test]
    async fn all_free_waits_for_the_last_slot() {
        let slots = CallSlots::new(4);
        let slot = slots.try_take().expect("a slot");
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.all_free().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !waiting.is_finished(),
            "all_free returned with a slot taken"
        );
        drop(slot);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("all_free returns once the slot is back")
            .expect("the waiting task ran");
    }
}
