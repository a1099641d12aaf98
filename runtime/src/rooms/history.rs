//! Room history: each room's recent messages (`History`), kept for
//! recovery, and the server-wide byte budget they all share
//! ([`HistoryBudget`]).
//!
//! Every change to a room's history goes through `History`, which
//! keeps the budget's count exact: bytes are counted in when a message is
//! stored and out when it is trimmed, evicted or its room dropped.

use super::policy::RoomRule;
use crate::rooms::hub::Outgoing;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One message kept for recovery.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) offset: u64,
    at: Instant,
    pub(super) frame: Outgoing,
}

/// The bytes of history the whole server keeps, against its bound.
#[derive(Debug)]
pub struct HistoryBudget {
    max: usize,
    used: AtomicUsize,
    /// Messages dropped before their room's own limits would have dropped
    /// them, to keep the total under `max`.
    evicted: AtomicU64,
    /// Bytes given back since the memory was last returned to the OS.
    released: AtomicUsize,
}

impl HistoryBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> HistoryBudget {
        HistoryBudget {
            max,
            used: AtomicUsize::new(0),
            evicted: AtomicU64::new(0),
            released: AtomicUsize::new(0),
        }
    }

    /// Whether more than the bound is in use.
    pub fn over(&self) -> bool {
        self.used() > self.max
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Messages evicted to stay under the bound, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Bytes freed since the last call (for deciding when to hand memory
    /// back to the OS).
    pub fn take_released(&self) -> usize {
        self.released.swap(0, Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        self.released.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One room's kept messages, oldest first.
#[derive(Debug, Default)]
pub(super) struct History {
    messages: VecDeque<Stored>,
    bytes: usize,
}

impl History {
    /// Stores a message, counting it against the budget.
    pub(super) fn push(&mut self, offset: u64, frame: Outgoing, budget: &HistoryBudget) {
        let len = frame.len();
        self.bytes += len;
        budget.add(len);
        self.messages.push_back(Stored {
            offset,
            at: Instant::now(),
            frame,
        });
    }

    /// Drops messages past the rule's count, size or age.
    pub(super) fn trim(&mut self, rule: &RoomRule, budget: &HistoryBudget) {
        let ttl = Duration::from_secs(rule.history_ttl_secs);
        while self.messages.len() > rule.history_size
            || self.bytes > rule.history_max_bytes
            || self.messages.front().is_some_and(|m| m.at.elapsed() > ttl)
        {
            if !self.pop_oldest(budget) {
                break;
            }
        }
    }

    /// Drops the oldest message to keep the server under its budget;
    /// `false` when there is none.
    pub(super) fn evict_oldest(&mut self, budget: &HistoryBudget) -> bool {
        let evicted = self.pop_oldest(budget);
        if evicted {
            budget.evicted.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }

    /// Drops everything (the room goes); returns how many messages went.
    pub(super) fn clear(&mut self, budget: &HistoryBudget) -> usize {
        let dropped = self.messages.len();
        budget.sub(self.bytes);
        self.messages.clear();
        self.bytes = 0;
        dropped
    }

    fn pop_oldest(&mut self, budget: &HistoryBudget) -> bool {
        match self.messages.pop_front() {
            Some(dropped) => {
                let len = dropped.frame.len();
                self.bytes -= len;
                budget.sub(len);
                true
            }
            None => false,
        }
    }

    /// Whether nothing is kept.
    pub(super) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The offset of the oldest message kept, if any.
    pub(super) fn oldest_offset(&self) -> Option<u64> {
        self.messages.front().map(|m| m.offset)
    }

    /// The messages after `since`, oldest first.
    pub(super) fn after(&self, since: u64) -> impl Iterator<Item = &Stored> {
        self.messages.iter().filter(move |m| m.offset > since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::hub::outgoing;

    #[test]
    fn the_budget_counts_every_byte_in_and_out() {
        let budget = HistoryBudget::new(10);
        let rule = RoomRule {
            history_size: 2,
            ..RoomRule::default()
        };
        let mut history = History::default();
        for offset in 1..=3 {
            history.push(offset, outgoing("abcd"), &budget);
        }
        assert_eq!(budget.used(), 12);
        assert!(budget.over());
        history.trim(&rule, &budget);
        assert_eq!(budget.used(), 8, "the rule keeps two");
        assert_eq!(history.oldest_offset(), Some(2));
        assert!(history.evict_oldest(&budget));
        assert_eq!((budget.used(), budget.evicted()), (4, 1));
        assert_eq!(history.clear(&budget), 1);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.take_released(), 12);
        assert!(!history.evict_oldest(&budget));
    }
}
