//! `switchboard bench`: load generators for the server (and for the floor
//! server it is compared with), like `redis-benchmark` for Redis.
//!
//! Scenarios: [`rpc`] (calls in flight over many connections), [`fanout`]
//! (rooms of subscribers and publishers), [`conns`] (idle connections and
//! server memory per connection), [`reload`] (hot-reload swap latency, and
//! load during a reload storm), [`soak`] (a bounded run of mixed load,
//! storms, reloads and hostile clients, checked for loss at the end).
//! Each prints a live progress line on
//! stderr and a final table, or JSON with `--json`.

pub(crate) mod busy_poll;
pub(crate) mod client;
pub(crate) mod conns;
pub(crate) mod cpu;
pub(crate) mod fanout;
pub(crate) mod reload;
pub(crate) mod rpc;
pub(crate) mod soak;
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
    /// Successful operations per second over the measured period (failed
    /// ones never count).
    pub(crate) rate: f64,
    /// Median latency, µs.
    pub(crate) p50_us: u64,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub(crate) p999_us: u64,
    /// Successful operations measured.
    pub(crate) count: u64,
    /// Error replies in the measured period (not in `count`).
    pub(crate) errors: u64,
    /// The first error reply, as the server sent it.
    pub(crate) first_error: Option<String>,
    /// CPU use over the measured period.
    pub(crate) cpu: cpu::CpuUse,
    /// Successful operations per CPU-second of the server (with `--pid`).
    pub(crate) per_server_cpu_second: Option<f64>,
    /// The server's core was less than 90% busy: the generator, not the
    /// server, set the pace, and the figures say nothing of the server.
    pub(crate) generator_bound: Option<bool>,
}

/// What a scenario's tasks measured, merged.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Latencies of the successful operations.
    pub(crate) latencies: Latencies,
    /// Error replies.
    pub(crate) errors: u64,
    /// The first error reply.
    pub(crate) first_error: Option<String>,
}

impl Tally {
    /// Counts an error reply.
    pub(crate) fn error(&mut self, reply: &str) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(reply.chars().take(500).collect());
        }
    }

    /// Adds another task's tally.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

impl Report {
    /// A report from what was measured over `duration`, with `cpu` the
    /// CPU use over that window.
    pub(crate) fn new(
        scenario: &'static str,
        unit: &'static str,
        tally: Tally,
        duration: Duration,
        cpu: cpu::CpuUse,
    ) -> Report {
        let latencies = tally.latencies;
        let count = latencies.count();
        Report {
            scenario,
            unit,
            rate: count as f64 / duration.as_secs_f64(),
            p50_us: latencies.quantile(0.5),
            p99_us: latencies.quantile(0.99),
            p999_us: latencies.quantile(0.999),
            count,
            errors: tally.errors,
            first_error: tally.first_error,
            per_server_cpu_second: cpu
                .server_seconds
                .filter(|s| *s > 0.0)
                .map(|s| count as f64 / s),
            generator_bound: cpu.server.map(|busy| busy < cpu::SERVER_BOUND),
            cpu,
        }
    }

    /// Refuses a run where most operations failed: its rate would say
    /// nothing (and a script must notice).
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.count == 0 && self.errors == 0 {
            anyhow::bail!("no operation completed in the measured period");
        }
        if self.errors > self.count {
            anyhow::bail!(
                "{} of {} operations failed; the first error: {}",
                self.errors,
                self.errors + self.count,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        Ok(())
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
        )?;
        match (self.cpu.server, self.per_server_cpu_second) {
            (Some(busy), Some(per_cpu)) => writeln!(
                f,
                "server CPU {:.0}% of a core: {per_cpu:.0} per server CPU-second{}",
                busy * 100.0,
                if busy < cpu::SERVER_BOUND {
                    " (GENERATOR-BOUND: the server was not the bottleneck)"
                } else {
                    ""
                }
            )?,
            _ => writeln!(
                f,
                "server CPU not measured (give --pid to know whether the server was the bottleneck)"
            )?,
        }
        if let Some(generator) = self.cpu.generator {
            writeln!(f, "load generator CPU {:.0}%", generator * 100.0)?;
        }
        if let Some(error) = &self.first_error {
            writeln!(f, "first error: {error}")?;
        }
        Ok(())
    }
}
