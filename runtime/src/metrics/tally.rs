//! Counting answered calls without a lock or an atomic operation per call.
//!
//! A call that succeeds is counted in its thread's tally: plain integers
//! (its outcome counter and its latency histogram's buckets) for the few
//! actions the thread answered last. The tally is added to the shared
//! metrics in one go when a connection flushes its replies to the socket
//! ([`flush_thread_tally`]), when the thread's runtime worker goes idle
//! (the server's runtime calls it on park), when the tally holds
//! [`MAX_PENDING`] calls, when a fifth action makes the one that entered
//! first go, and when the thread exits. So a count waits at most until
//! its thread next flushes a connection, goes idle or counts 256 more.
//!
//! [`Latency`] is the shared histogram itself: atomic buckets, in
//! nanoseconds, that take a whole tally at once, encoded as a Prometheus
//! histogram in seconds.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Call latency buckets' upper bounds, in nanoseconds: 50 µs to 10 s (and
/// `+Inf` after them).
const BOUNDS_NANOS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    10_000_000_000,
];
/// The buckets, `+Inf` included.
const BUCKETS: usize = BOUNDS_NANOS.len() + 1;
/// A tally is added to the shared metrics once it holds this many calls.
pub(super) const MAX_PENDING: u32 = 256;
/// How many actions a thread's tally counts at once.
const ACTIONS_PER_TALLY: usize = 4;

/// The bucket `nanos` falls in.
fn bucket_of(nanos: u64) -> usize {
    BOUNDS_NANOS
        .iter()
        .position(|&bound| nanos <= bound)
        .unwrap_or(BOUNDS_NANOS.len())
}

/// A call-latency histogram shared by every thread (one per action).
#[derive(Debug, Clone, Default)]
pub struct Latency(Arc<LatencyCells>);

#[derive(Debug, Default)]
struct LatencyCells {
    /// Observations per bucket (not cumulative).
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Counts one call that took `elapsed`, at once.
    pub fn observe(&self, elapsed: Duration) {
        let mut one = Buckets::default();
        one.observe(elapsed);
        self.add(&one);
    }

    /// Adds a tally's observations.
    fn add(&self, tally: &Buckets) {
        for (cell, &count) in self.0.buckets.iter().zip(&tally.counts) {
            if count > 0 {
                cell.fetch_add(u64::from(count), Ordering::Relaxed);
            }
        }
        self.0
            .sum_nanos
            .fetch_add(tally.sum_nanos, Ordering::Relaxed);
    }

    /// Whether `self` and `other` are the same histogram.
    fn same(&self, other: &Latency) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Its observations: per bucket, their count, their sum in seconds.
    fn read(&self) -> ([u64; BUCKETS], u64, f64) {
        let buckets = std::array::from_fn(|i| self.0.buckets[i].load(Ordering::Relaxed));
        let count = buckets.iter().sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (buckets, count, sum)
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (counts, count, sum) = self.read();
        let buckets: Vec<(f64, u64)> = BOUNDS_NANOS
            .iter()
            .map(|&bound| bound as f64 / 1e9)
            .chain(std::iter::once(f64::MAX))
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Observations not yet added to a [`Latency`].
#[derive(Debug, Default)]
struct Buckets {
    counts: [u32; BUCKETS],
    sum_nanos: u64,
}

impl Buckets {
    fn observe(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }
}

/// One action's successes counted by this thread and not yet added.
#[derive(Debug)]
struct Pending {
    ok: Counter,
    latency: Latency,
    calls: u32,
    buckets: Buckets,
}

impl Pending {
    /// Adds what it holds to the shared metrics, and starts again from
    /// nothing (keeping its handles: no reference count moves).
    fn add_to_shared(&mut self) {
        if self.calls > 0 {
            self.ok.inc_by(u64::from(self.calls));
            self.latency.add(&self.buckets);
            self.calls = 0;
            self.buckets = Buckets::default();
        }
    }
}

/// A thread's successes not yet added to the shared metrics.
#[derive(Debug, Default)]
struct Tally {
    actions: Vec<Pending>,
    calls: u32,
}

impl Tally {
    fn count(&mut self, ok: &Counter, latency: &Latency, elapsed: Duration) {
        let index = match self.actions.iter().position(|p| p.latency.same(latency)) {
            Some(index) => index,
            None => {
                if self.actions.len() == ACTIONS_PER_TALLY {
                    // The action that entered first makes room.
                    self.actions.remove(0).add_to_shared();
                }
                self.actions.push(Pending {
                    ok: ok.clone(),
                    latency: latency.clone(),
                    calls: 0,
                    buckets: Buckets::default(),
                });
                self.actions.len() - 1
            }
        };
        let pending = &mut self.actions[index];
        pending.calls += 1;
        pending.buckets.observe(elapsed);
        self.calls += 1;
        if self.calls >= MAX_PENDING {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.calls = 0;
        for pending in &mut self.actions {
            pending.add_to_shared();
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static TALLY: RefCell<Tally> = RefCell::new(Tally::default());
}

/// Counts one success of the action whose handles are `ok` and `latency`
/// in this thread's tally (directly, if the thread is exiting).
pub(super) fn count_success(ok: &Counter, latency: &Latency, elapsed: Duration) {
    let counted = TALLY.try_with(|tally| match tally.try_borrow_mut() {
        Ok(mut tally) => {
            tally.count(ok, latency, elapsed);
            true
        }
        Err(_) => false,
    });
    if counted != Ok(true) {
        ok.inc();
        latency.observe(elapsed);
    }
}

/// Adds this thread's tally to the shared metrics: called before a
/// connection's replies are flushed to its socket, and when a runtime
/// worker goes idle (a program that runs the server on a runtime of its
/// own passes this to `tokio::runtime::Builder::on_thread_park`).
pub fn flush_thread_tally() {
    let _ = TALLY.try_with(|tally| {
        if let Ok(mut tally) = tally.try_borrow_mut()
            && tally.calls > 0
        {
            tally.flush();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50_000), 0);
        assert_eq!(bucket_of(50_001), 1);
        assert_eq!(bucket_of(10_000_000_000), 13);
        assert_eq!(bucket_of(u64::MAX), 14);
        let latency = Latency::default();
        latency.observe(micros(30));
        latency.observe(micros(700));
        latency.observe(Duration::from_secs(60));
        let (buckets, count, sum) = latency.read();
        assert_eq!(count, 3);
        assert_eq!((buckets[0], buckets[4], buckets[14]), (1, 1, 1));
        assert!((sum - 60.000_73).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn a_tally_reaches_the_shared_metrics_when_flushed_and_not_before() {
        let (ok, latency) = (Counter::default(), Latency::default());
        for _ in 0..3 {
            count_success(&ok, &latency, micros(10));
        }
        assert_eq!(ok.get(), 0, "still in the thread's tally");
        flush_thread_tally();
        assert_eq!(ok.get(), 3);
        assert_eq!(latency.read().1, 3);
        flush_thread_tally();
        assert_eq!(ok.get(), 3, "added once");
    }

    #[test]
    fn a_full_tally_or_a_fifth_action_adds_itself_without_a_flush() {
        let (ok, latency) = (Counter::default(), Latency::default());
        for _ in 0..MAX_PENDING {
            count_success(&ok, &latency, micros(10));
        }
        assert_eq!(ok.get(), u64::from(MAX_PENDING));
        let actions: Vec<(Counter, Latency)> = (0..5).map(|_| Default::default()).collect();
        for (ok, latency) in &actions {
            count_success(ok, latency, micros(10));
        }
        assert_eq!(actions[0].0.get(), 1, "the first in made room");
        assert_eq!(actions[4].0.get(), 0);
        flush_thread_tally();
        assert!(
            actions
                .iter()
                .all(|(ok, latency)| ok.get() == 1 && latency.read().1 == 1)
        );
    }

    #[test]
    fn a_tally_is_added_when_its_thread_exits() {
        let (ok, latency) = (Counter::default(), Latency::default());
        let (ok2, latency2) = (ok.clone(), latency.clone());
        std::thread::spawn(move || count_success(&ok2, &latency2, micros(10)))
            .join()
            .unwrap_or_default();
        assert_eq!(ok.get(), 1);
        assert_eq!(latency.read().1, 1);
    }

    #[test]
    fn it_encodes_as_a_histogram_in_seconds() {
        let mut registry = prometheus_client::registry::Registry::default();
        let latency = Latency::default();
        latency.observe(micros(70));
        registry.register("lat", "latency", latency);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(text.contains("# TYPE lat histogram"), "{text}");
        assert!(text.contains("lat_bucket{le=\"0.00005\"} 0"), "{text}");
        assert!(text.contains("lat_bucket{le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("lat_bucket{le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("lat_count 1"), "{text}");
    }
}
