//! [`Lane`]: calls that must run one at a time, in the order they were
//! read, although they run beside a connection's other calls (a
//! connection's room calls on a cluster broker: its publishes keep their
//! order while a ping or an action does not wait behind them).
//!
//! Each call takes a numbered [`Turn`] when it is read; it waits until
//! the lane serves that number, and passes the lane on when it is done
//! (or dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// One connection's lane.
#[derive(Debug, Default)]
pub struct Lane {
    /// The next number to give out.
    next: AtomicU64,
    /// The number being served.
    serving: AtomicU64,
    changed: Notify,
}

impl Lane {
    /// The next turn.
    pub fn take_turn(self: &Arc<Self>) -> Turn {
        Turn {
            lane: Arc::clone(self),
            number: self.next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A place in a [`Lane`]; passes the lane on when dropped.
#[derive(Debug)]
pub struct Turn {
    lane: Arc<Lane>,
    number: u64,
}

impl Turn {
    /// Waits until it is this turn's.
    pub async fn wait(&self) {
        loop {
            let changed = self.lane.changed.notified();
            if self.lane.serving.load(Ordering::Acquire) == self.number {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        // Passes the lane on only once served: a turn dropped before its
        // time (its connection closing) leaves the rest to close too.
        if self
            .lane
            .serving
            .compare_exchange(
                self.number,
                self.number + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.lane.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_served_in_the_order_they_were_taken() {
        let lane = Arc::new(Lane::default());
        let turns: Vec<Turn> = (0..5).map(|_| lane.take_turn()).collect();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Started last to first: they still run first to last.
        for (i, turn) in turns.into_iter().enumerate().rev() {
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                turn.wait().await;
                tokio::task::yield_now().await;
                order.lock().map(|mut o| o.push(i)).ok();
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        let order = order.lock().map(|o| o.clone()).unwrap_or_default();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }
}
