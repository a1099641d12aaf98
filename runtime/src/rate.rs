//! [`TokenBucket`]: a rate limit that allows short bursts: up to
//! `capacity` events at once, refilled at `capacity` per `period`.

use std::time::{Duration, Instant};

/// A token bucket. Not shared by itself: keep it behind the owner's lock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens that refills `capacity` tokens
    /// every `period`.
    pub fn new(capacity: u32, period: Duration) -> TokenBucket {
        let capacity = f64::from(capacity);
        TokenBucket {
            capacity,
            per_second: capacity / period.as_secs_f64().max(f64::MIN_POSITIVE),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
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
