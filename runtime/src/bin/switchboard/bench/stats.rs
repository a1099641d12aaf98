//! [`Latencies`]: a log-bucketed latency histogram (microseconds) cheap
//! enough to record every reply, with percentiles.

/// Buckets: 0..64 µs exactly, then 32 sub-buckets per power of two.
const LINEAR: u64 = 64;
const SUB: u64 = 32;
const BUCKETS: usize = 64 + 32 * 40;

/// A latency histogram.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn bucket(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let power = 63 - u64::from(us.leading_zeros()); // >= 6
    let sub = (us >> (power - 5)) & (SUB - 1);
    let index = LINEAR + (power - 6) * SUB + sub;
    (index as usize).min(BUCKETS - 1)
}

fn bucket_value(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let power = (index - LINEAR) / SUB + 6;
    let sub = (index - LINEAR) % SUB;
    (1 << power) + (sub << (power - 5))
}

impl Latencies {
    /// Records one latency in microseconds.
    pub(crate) fn record(&mut self, us: u64) {
        self.counts[bucket(us)] += 1;
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub(crate) fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// How many were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let target = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return bucket_value(index);
            }
        }
        bucket_value(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_few_percent() {
        let mut h = Latencies::default();
        for us in 1..=10_000 {
            h.record(us);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 5_000.0).abs() / 5_000.0 < 0.04, "{p50}");
        assert!((p99 - 9_900.0).abs() / 9_900.0 < 0.04, "{p99}");
        assert_eq!(h.count(), 10_000);
    }
}
