//! CPU time over a benchmark's measured window: the server's (given its
//! process ids, added up: a cluster's nodes and Redis are one server) and
//! this load generator's, from `/proc/<pid>/stat`. A
//! figure counts only when the server was the bottleneck: a server core
//! less than [`SERVER_BOUND`] busy means the generator could not drive it,
//! and the run is marked generator-bound.

use serde::Serialize;
use std::time::Instant;

/// The share of one core the server must use for a run to measure it.
pub(crate) const SERVER_BOUND: f64 = 0.9;

/// CPU seconds (user and system, all threads) a process has used.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after
    // its closing parenthesis, where field 3 (the state) comes first.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// CPU seconds the processes `pids` have used, added up; `None` when
/// none is given or one cannot be read.
pub(crate) fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| cpu_seconds(Some(pid))).sum()
}

/// The start of a measured window.
#[derive(Debug, Clone)]
pub(crate) struct CpuWindow {
    server_pids: Vec<u32>,
    server: Option<f64>,
    generator: Option<f64>,
    at: Instant,
}

/// CPU use over a window, in cores busy (1.0: one core all the time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct CpuUse {
    /// The server's, if its process id was given.
    pub(crate) server: Option<f64>,
    /// This load generator's.
    pub(crate) generator: Option<f64>,
    /// Server CPU seconds in the window.
    pub(crate) server_seconds: Option<f64>,
}

impl CpuWindow {
    /// Starts a window now.
    pub(crate) fn start(server_pids: Vec<u32>) -> CpuWindow {
        CpuWindow {
            server: total_cpu_seconds(&server_pids),
            server_pids,
            generator: cpu_seconds(None),
            at: Instant::now(),
        }
    }

    /// Ends the window now.
    pub(crate) fn finish(self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let server_seconds = self
            .server
            .zip(total_cpu_seconds(&self.server_pids))
            .map(|(before, after)| after - before);
        let generator_seconds = self
            .generator
            .zip(cpu_seconds(None))
            .map(|(before, after)| after - before);
        CpuUse {
            server: server_seconds.map(|s| s / wall),
            generator: generator_seconds.map(|s| s / wall),
            server_seconds,
        }
    }
}

/// Measures the window from `from` to `to` on a task of its own.
pub(crate) fn measure(
    server_pids: Vec<u32>,
    from: Instant,
    to: Instant,
) -> tokio::task::JoinHandle<CpuUse> {
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let window = CpuWindow::start(server_pids);
        tokio::time::sleep_until(to.into()).await;
        window.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu() {
        let spent = cpu_seconds(None).unwrap_or(-1.0);
        assert!(spent >= 0.0, "{spent}");
        let window = CpuWindow::start(vec![std::process::id()]);
        let mut x = 0u64;
        let until = Instant::now() + std::time::Duration::from_millis(200);
        while Instant::now() < until {
            x = x.wrapping_add(1);
        }
        let used = window.finish();
        assert!(x > 0);
        let busy = used.server.unwrap_or(0.0);
        assert!(
            busy > 0.3 && busy < 1.5,
            "a spinning thread is about one core: {busy}"
        );
    }

    #[test]
    fn several_processes_add_up_and_one_unreadable_reads_as_unknown() {
        let me = std::process::id();
        assert_eq!(total_cpu_seconds(&[]), None);
        let once = total_cpu_seconds(&[me]).unwrap_or(-1.0);
        let twice = total_cpu_seconds(&[me, me]).unwrap_or(-1.0);
        assert!(once >= 0.0 && twice >= 2.0 * once, "{once} then {twice}");
        // Past any pid the kernel hands out (pid_max is at most 2^22).
        assert_eq!(total_cpu_seconds(&[me, u32::MAX]), None);
    }
}
