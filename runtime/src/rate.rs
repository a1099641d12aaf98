//! [`TokenBucket`]: a rate limit that allows short bursts: up to
//! `capacity` events at once, refilled at `capacity` per `period`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A token bucket. Not shared by itself: keep it behind the owner's lock.
/// Small (16 bytes), since every connection has one: single precision is
/// plenty for counts of events, and times are milliseconds since the
/// process started (wrapping after 49 days, which only shortens a
/// refill).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f32,
    per_ms: f32,
    tokens: f32,
    last_ms: u32,
}

/// Milliseconds between the process's first use of a bucket and `at`.
fn millis_since_start(at: Instant) -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u32
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens that refills `capacity` tokens
    /// every `period`.
    pub fn new(capacity: u32, period: Duration) -> TokenBucket {
        let capacity = capacity as f32;
        TokenBucket {
            capacity,
            per_ms: capacity / (period.as_millis().max(1) as f32),
            tokens: capacity,
            last_ms: millis_since_start(Instant::now()),
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let now_ms = millis_since_start(now);
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.capacity);
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Returns one token taken for something that did not happen after all.
    pub fn give_back(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_capacity_then_refills_over_its_period() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, Duration::from_secs(60));
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_secs(19)));
        assert!(bucket.try_take(start + Duration::from_secs(21)));
        assert!(!bucket.try_take(start + Duration::from_secs(21)));
        let later = start + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later), "never more than its capacity");
        bucket.give_back();
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }
}
