//! The server's resident memory through the soak: sampled every second
//! from `/proc/<pid>/status`, and its slope (least squares) over the
//! second half of the run, after the warm-up.

use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Samples: (seconds since the start, RSS in KiB).
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Arc<Mutex<Vec<(f64, u64)>>>);

/// What the RSS samples say.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RssFigures {
    /// Samples taken.
    pub(crate) samples: usize,
    /// The first sample, KiB.
    pub(crate) start_kib: u64,
    /// The first sample of the second half, KiB.
    pub(crate) half_kib: u64,
    /// The last sample, KiB.
    pub(crate) end_kib: u64,
    /// The largest sample, KiB.
    pub(crate) peak_kib: u64,
    /// Growth over the second half, MiB per minute (least squares).
    pub(crate) slope_mib_per_min: f64,
    /// The bound it must stay under, MiB per minute.
    pub(crate) bound_mib_per_min: f64,
}

impl Samples {
    /// Samples `pid` every second from now until `end`.
    pub(crate) fn start(pid: u32, end: Instant) -> (Samples, tokio::task::JoinHandle<()>) {
        let samples = Samples::default();
        let into = samples.clone();
        let task = tokio::spawn(async move {
            let origin = Instant::now();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                every.tick().await;
                if let Some(kib) = crate::bench::conns::rss_kib(pid)
                    && let Ok(mut samples) = into.0.lock()
                {
                    samples.push((origin.elapsed().as_secs_f64(), kib));
                }
            }
        });
        (samples, task)
    }

    /// The figures, with the slope's bound: `percent` of the second
    /// half's mean RSS per minute, or `mib` MiB per minute, whichever is
    /// larger. `None` with fewer than 4 samples in the second half.
    pub(crate) fn figures(&self, percent: f64, mib: f64) -> Option<RssFigures> {
        let samples = self.0.lock().ok()?.clone();
        let half = &samples[samples.len() / 2..];
        if half.len() < 4 {
            return None;
        }
        let n = half.len() as f64;
        let mean_t = half.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_kib = half.iter().map(|(_, k)| *k as f64).sum::<f64>() / n;
        let (mut cov, mut var) = (0.0, 0.0);
        for (t, kib) in half {
            cov += (t - mean_t) * (*kib as f64 - mean_kib);
            var += (t - mean_t) * (t - mean_t);
        }
        let kib_per_s = if var > 0.0 { cov / var } else { 0.0 };
        Some(RssFigures {
            samples: samples.len(),
            start_kib: samples.first().map_or(0, |s| s.1),
            half_kib: half.first().map_or(0, |s| s.1),
            end_kib: samples.last().map_or(0, |s| s.1),
            peak_kib: samples.iter().map(|s| s.1).max().unwrap_or(0),
            slope_mib_per_min: kib_per_s * 60.0 / 1024.0,
            bound_mib_per_min: (mean_kib / 1024.0 * percent / 100.0).max(mib),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_taken_over_the_second_half() {
        let samples = Samples::default();
        if let Ok(mut s) = samples.0.lock() {
            // Growing 10 MiB in the first half, then 1 MiB a minute.
            for t in 0..60 {
                let kib = if t < 30 {
                    t * 10 * 1024 / 30
                } else {
                    10 * 1024 + (t - 30) * 1024 / 60
                };
                s.push((t as f64, 100_000 + kib));
            }
        }
        let figures = samples.figures(1.0, 4.0);
        let slope = figures.as_ref().map_or(-1.0, |f| f.slope_mib_per_min);
        assert!((slope - 1.0).abs() < 0.05, "{figures:?}");
        assert_eq!(figures.map(|f| f.bound_mib_per_min), Some(4.0));
    }
}
