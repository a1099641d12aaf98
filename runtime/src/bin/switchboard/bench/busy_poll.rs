//! `bench --busy-poll`: the load generator's threads poll their sockets
//! instead of sleeping while a run is on.
//!
//! Why: on one machine, a reply that finds the generator's thread asleep in
//! `epoll_wait` makes the server's `send` wake it, and waking an idle core
//! costs the sender an inter-processor interrupt. On a virtual machine that
//! is a trip to the hypervisor, charged to the server's CPU (measured here:
//! about a fifth of a saturated server's time, in `sock_def_readable`). The
//! slower a server, the more often the generator has gone idle between its
//! replies, so the charge grows as the server slows: it measures the
//! co-location, not the server. A server's real clients are on other
//! machines and never cost it this. With `--busy-poll` a task on each
//! worker yields at once whenever it runs, so a worker with nothing else to
//! do polls for I/O without blocking (tokio polls with a zero timeout while
//! a yielded task waits) and its core never idles. The generator's own CPU
//! then reads as fully busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The spinning tasks; they stop when this is dropped.
#[derive(Debug)]
pub(crate) struct BusyPoll {
    stop: Arc<AtomicBool>,
}

/// Starts one spinning task per worker thread of `runtime`.
pub(crate) fn start(runtime: &tokio::runtime::Runtime, workers: usize) -> BusyPoll {
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..workers.max(1) {
        let stop = Arc::clone(&stop);
        runtime.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::task::yield_now().await;
            }
        });
    }
    BusyPoll { stop }
}

impl Drop for BusyPoll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinner_runs_per_worker_and_stops_when_dropped() {
        let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        else {
            panic!("could not start a runtime");
        };
        let busy = start(&runtime, 1);
        // Timers still fire while it spins (the driver is polled between
        // its turns).
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(20)).await });
        let alive = runtime.metrics().num_alive_tasks();
        assert_eq!(alive, 1, "one spinner runs");
        drop(busy);
        runtime.block_on(async {
            while tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > 0
            {
                tokio::task::yield_now().await;
            }
        });
        assert_eq!(runtime.metrics().num_alive_tasks(), 0);
    }
}
