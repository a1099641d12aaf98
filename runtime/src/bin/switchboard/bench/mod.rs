//! `switchboard bench`: load generators for the server (and for the floor
//! server it is compared with), like `redis-benchmark` for Redis.
//!
//! Scenarios: [`rpc`] (calls in flight over many connections), [`fanout`]
//! (rooms of subscribers and publishers), [`conns`] (idle connections and
//! server memory per connection), [`reload`] (hot-reload swap latency, and
//! load during a reload storm). Each prints a live progress line on
//! stderr and a final table, or JSON with `--json`.

pub(crate) mod client;
pub(crate) mod conns;
pub(crate) mod fanout;
pub(crate) mod reload;
pub(crate) mod rpc;
pub(crate) mod stats;
pub(crate) mod storm;

use serde::Serialize;
use stats::Latencies;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts completed operations for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    done: AtomicU64,
}

impl Progress {
    /// Adds `n` completed operations.
    pub(crate) fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Prints `scenario: rate unit` on stderr every second until `end`.
    pub(crate) fn start_ticker(
        self: &std::sync::Arc<Self>,
        scenario: &'static str,
        unit: &'static str,
        end: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let progress = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            let mut last = 0;
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            while Instant::now() < end {
                every.tick().await;
                let now = progress.done.load(Ordering::Relaxed);
                eprint!("\r{scenario}: {:>10} {unit}   ", now - last);
                last = now;
            }
            eprintln!();
        })
    }
}

/// The result of a throughput scenario.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The scenario.
    pub(crate) scenario: &'static str,
    /// What is counted per second.
    pub(crate) unit: &'static str,
    /// Operations per second over the measured period.
    pub(crate) rate: f64,
    /// Median latency, µs.
    pub(crate) p50_us: u64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub(crate) p999_us: u64,
    /// Operations measured.
    pub(crate) count: u64,
    /// Error replies among them.
    pub(crate) errors: u64,
}

impl Report {
    /// A report from a latency histogram over `duration`.
    pub(crate) fn new(
        scenario: &'static str,
        unit: &'static str,
        latencies: Latencies,
        errors: u64,
        duration: Duration,
    ) -> Report {
        Report {
            scenario,
            unit,
            rate: latencies.count() as f64 / duration.as_secs_f64(),
            p50_us: latencies.quantile(0.5),
            p99_us: latencies.quantile(0.99),
            p999_us: latencies.quantile(0.999),
            count: latencies.count(),
            errors,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "scenario  {:>14}  {:>9}  {:>9}  {:>9}  {:>7}",
            self.unit, "p50 µs", "p99 µs", "p99.9 µs", "errors"
        )?;
        writeln!(
            f,
            "{:<8}  {:>14.0}  {:>9}  {:>9}  {:>9}  {:>7}",
            self.scenario, self.rate, self.p50_us, self.p99_us, self.p999_us, self.errors
        )
    }
}
