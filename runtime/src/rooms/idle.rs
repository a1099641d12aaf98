//! [`IdleQueue`]: rooms whose members have all left (kept for their
//! history, and for a while for recovery), in the order they became idle. When the server needs room
//! (its room count or history bytes at their bound), the oldest idle room
//! goes first.
//!
//! Entries are checked when taken, not removed when a room stops being
//! idle: each carries the number the room was given when it became idle,
//! and a room that has members again (or idled again since) no longer
//! answers to it. The queue is compacted when stale entries pile up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, Weak};

/// Rooms that became idle, oldest first, each with its idle number.
///
/// Lock order: the queue's lock may be held while a room's lock is taken
/// (compaction), never the other way round; idle numbers come from an
/// atomic, so a room's lock holder can take one without the queue's lock.
#[derive(Debug)]
pub(super) struct IdleQueue<T> {
    queue: Mutex<VecDeque<(u64, Weak<T>)>>,
    next: AtomicU64,
}

impl<T> IdleQueue<T> {
    pub(super) fn new() -> IdleQueue<T> {
        IdleQueue {
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(u64, Weak<T>)>> {
        // Each critical section is one queue operation: poison is harmless.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh idle number (never 0). Takes no lock.
    pub(super) fn next_number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a room that became idle with `number`. When the queue holds
    /// more than `limit` entries, those `still_idle` rejects are dropped
    /// first (`still_idle` must not take this queue's lock).
    pub(super) fn push(
        &self,
        number: u64,
        room: Weak<T>,
        limit: usize,
        still_idle: impl Fn(u64, &T) -> bool,
    ) {
        let mut queue = self.lock();
        queue.push_back((number, room));
        if queue.len() > limit {
            queue.retain(|(n, weak)| weak.upgrade().is_some_and(|room| still_idle(*n, &room)));
        }
    }

    /// Takes the oldest entry (which may be stale: check it).
    pub(super) fn pop(&self) -> Option<(u64, Weak<T>)> {
        self.lock().pop_front()
    }

    /// Entries held now, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn stale_entries_are_dropped_when_the_queue_passes_its_limit() {
        let queue = IdleQueue::new();
        let rooms: Vec<Arc<u64>> = (0..10).map(Arc::new).collect();
        for room in &rooms {
            let n = queue.next_number();
            // Only even rooms are still idle.
            queue.push(n, Arc::downgrade(room), 5, |_, r: &u64| r.is_multiple_of(2));
        }
        assert!(queue.len() <= 5, "compacted: {}", queue.len());
        let mut left = Vec::new();
        while let Some((_, weak)) = queue.pop() {
            if let Some(room) = weak.upgrade() {
                left.push(*room);
            }
        }
        assert_eq!(
            left,
            [0, 2, 4, 6, 8],
            "only rooms still idle remain, in order"
        );
    }
}
