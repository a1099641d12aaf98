//! [`ActionThreads`]: the threads plugin actions run on.
//!
//! An action may block (sleep, wait on I/O, spin), so it never runs on a
//! runtime worker. tokio's blocking pool would do, but it starts a new
//! thread for every task that finds no idle thread at that instant: a
//! burst of 40 calls read from one socket takes 40 threads even when each
//! call lasts microseconds, and under load the pool grows to hundreds of
//! threads that each run a call now and then, cold in cache (measured:
//! calls/s fell by a sixth as it grew from 180 to 470 threads).
//!
//! Here calls queue, and a thread that finishes a call takes the next one
//! without sleeping. Threads are added in two ways:
//! - eagerly, up to one per core, when a call finds no idle thread;
//! - past that, only when the queue stalls: a watcher checks every
//!   millisecond while calls wait, and if no call has started since the
//!   last check, it watches one more millisecond, this time reading how
//!   long each thread waited for a CPU (the kernel's `schedstat`). Still
//!   no call started, and no thread short of CPU: every thread is blocked
//!   in a slow action, so it adds a thread for every waiting call, at most
//!   doubling the pool per check, up to the cap. A thread that was ready
//!   to run but waited for a CPU means the process is short of CPU, not
//!   blocked: more threads would only take turns on the same cores, so
//!   none is added (on a saturated core, a millisecond without a started
//!   call is normal, and growing on it once took the pool to 300 threads).
//!
//! The watcher sleeps while no call waits, is woken at most once per
//! check interval, and while calls move reads no kernel statistics
//! (reading them at every wake once cost the pool's core 7%).
//!
//! So short calls share a few hot threads, and a slow call never holds up
//! another by more than about two milliseconds. Threads idle for 10 s
//! exit.
//!
//! Handing calls over in batches, not one at a time: where action threads
//! share a core with a runtime worker (a server pinned to one core, or
//! more busy threads than cores), each hand-over could cost two context
//! switches. So a woken action thread does not preempt the worker (see
//! [`crate::sys::defer_on_wakeup`]), and a worker about to go idle while
//! calls are queued or running yields its core first
//! ([`yield_to_pending_calls`]): the action threads then answer all they
//! have before the worker is woken for the replies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long a thread waits for work before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How often the watcher checks a queue that is not moving.
const STALL_CHECK: Duration = Duration::from_millis(1);

/// Work the pool runs on one of its threads: an action call.
///
/// The server's pool runs one concrete type (a call handed over, see
/// `rpc::dispatch`), so its queue holds the calls themselves and handing
/// one over allocates nothing; boxed, each call cost an allocation and
/// its free (3.5% of a pool call's instructions, callgrind). Any closure is
/// a job too, boxed or not.
pub trait Job: Send + 'static {
    /// Does the work (on a pool thread).
    fn run(self);
}

impl<F: FnOnce() + Send + 'static> Job for F {
    fn run(self) {
        self();
    }
}

/// Calls queued or running on any pool of this process.
static PENDING_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Called by a runtime worker about to go idle (the server passes it to
/// `tokio::runtime::Builder::on_thread_park`): while action calls are
/// queued or running, yields the core, so that an action thread waiting
/// for it answers them all before the worker sleeps (otherwise the
/// first reply would wake the worker, which would take the core back
/// for that one reply, and so on, call by call). A system call only
/// while calls are pending; with a core to itself an action thread never
/// waits for this, and the yield returns at once.
pub fn yield_to_pending_calls() {
    if PENDING_CALLS.load(Ordering::Relaxed) > 0 {
        std::thread::yield_now();
    }
}

/// The pool, running jobs of type `J`. Clones share it.
pub struct ActionThreads<J: Job> {
    shared: Arc<Shared<J>>,
}

impl<J: Job> Clone for ActionThreads<J> {
    fn clone(&self) -> Self {
        ActionThreads {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<J: Job> std::fmt::Debug for ActionThreads<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionThreads")
            .field("shared", &self.shared)
            .finish()
    }
}

struct Shared<J> {
    state: Mutex<State<J>>,
    /// Idle threads wait here for work.
    work: Condvar,
    /// The watcher waits here while the queue is empty.
    queued: Condvar,
    /// Most threads at once.
    max: usize,
    /// Threads added without waiting for a stall.
    eager: usize,
    /// How long the queue may stand still before threads are added.
    stall_check: Duration,
}

impl<J> std::fmt::Debug for Shared<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("max", &self.max)
            .field("eager", &self.eager)
            .field("stall_check", &self.stall_check)
            .finish_non_exhaustive()
    }
}

struct State<J> {
    queue: VecDeque<J>,
    threads: usize,
    /// Threads waiting for work that no one has woken yet.
    idle: usize,
    /// Wake-ups sent that no waiting thread has taken yet: a call that
    /// finds one on its way does not send another (each is a system
    /// call, and a burst of calls read at once would send one per call).
    wakeups: usize,
    /// Calls taken off the queue so far: the watcher's sign of progress.
    started: u64,
    /// The kernel ids of the pool's threads.
    tids: Vec<i32>,
    /// Threads that could not be started (the error, once).
    spawn_failed: bool,
    /// The watcher is waiting for a call to queue.
    watcher_asleep: bool,
}

impl<J> Default for State<J> {
    fn default() -> Self {
        State {
            queue: VecDeque::new(),
            threads: 0,
            idle: 0,
            wakeups: 0,
            started: 0,
            tids: Vec::new(),
            spawn_failed: false,
            watcher_asleep: false,
        }
    }
}

impl<J: Job> ActionThreads<J> {
    /// A pool of at most `max` threads, up to one per core started
    /// eagerly.
    pub fn new(max: usize) -> ActionThreads<J> {
        ActionThreads::with_stall_check(max, STALL_CHECK)
    }

    /// As [`ActionThreads::new`], with the watcher checking every
    /// `stall_check`.
    fn with_stall_check(max: usize, stall_check: Duration) -> ActionThreads<J> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            queued: Condvar::new(),
            max: max.max(1),
            eager: cores.clamp(1, max.max(1)),
            stall_check,
        });
        let watcher = Arc::clone(&shared);
        if let Err(e) = std::thread::Builder::new()
            .name("action-watch".into())
            .spawn(move || watch(&watcher))
        {
            tracing::error!("could not start the action pool's watcher thread: {e}");
        }
        ActionThreads { shared }
    }

    /// Runs `job` on a pool thread as soon as one is free.
    pub fn run(&self, job: J) {
        PENDING_CALLS.fetch_add(1, Ordering::Relaxed);
        let mut state = lock(&self.shared.state);
        state.queue.push_back(job);
        if state.idle > 0 {
            state.idle -= 1;
            state.wakeups += 1;
            self.shared.work.notify_one();
        } else if state.threads < self.shared.eager {
            start_thread(&self.shared, &mut state);
        }
        // The watcher keeps an eye on every queued call (the thread taking
        // it may block, and nothing else may come to wake the watcher).
        // Woken only when asleep: a notify is a system call even with none
        // waiting, and once awake it checks every interval until the queue
        // is empty, so this is at most once per interval.
        if state.watcher_asleep {
            state.watcher_asleep = false;
            self.shared.queued.notify_one();
        }
    }
}

fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    // A job never runs under the lock, so a poisoned lock only means a
    // panic in this module's own few lines: the state is still whole.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts one more thread (the caller holds the lock).
fn start_thread<J: Job>(shared: &Arc<Shared<J>>, state: &mut State<J>) {
    let worker = Arc::clone(shared);
    match std::thread::Builder::new()
        .name("action".into())
        .spawn(move || work(&worker))
    {
        Ok(_) => state.threads += 1,
        Err(e) => {
            if !state.spawn_failed {
                tracing::error!(
                    "could not start an action thread (calls wait for a free one): {e}"
                );
                state.spawn_failed = true;
            }
        }
    }
}

/// A pool thread: runs queued calls until it has been idle for
/// [`KEEP_ALIVE`].
fn work<J: Job>(shared: &Arc<Shared<J>>) {
    let tid = crate::sys::thread_id();
    // A woken action thread waits for the runtime's worker to finish its
    // turn rather than preempting it: calls then hand over in batches
    // (on one core: 30x fewer context switches, calls/s up by half).
    crate::sys::defer_on_wakeup();
    let mut state = lock(&shared.state);
    state.tids.push(tid);
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.started += 1;
            drop(state);
            // Actions catch their own panics at the plugin boundary; this
            // keeps the thread (and the pool's count) whole regardless.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || job.run()));
            PENDING_CALLS.fetch_sub(1, Ordering::Relaxed);
            state = lock(&shared.state);
            continue;
        }
        state.idle += 1;
        let (next, timeout) = shared
            .work
            .wait_timeout(state, KEEP_ALIVE)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state = next;
        // Woken by a call (which took this thread off `idle`), or by a
        // timeout or spuriously (still counted there): either way, one
        // thread fewer waits.
        if state.wakeups > 0 {
            state.wakeups -= 1;
        } else {
            state.idle -= 1;
        }
        if timeout.timed_out() && state.queue.is_empty() {
            state.threads -= 1;
            if let Some(at) = state.tids.iter().position(|t| *t == tid) {
                state.tids.swap_remove(at);
            }
            return;
        }
    }
}

/// The watcher: while calls wait, checks every [`STALL_CHECK`] that one
/// has started since the last check; if none has, and none does during
/// one more check in which no thread was short of CPU, every thread is
/// busy in a slow call, so it adds a thread for each waiting call.
fn watch<J: Job>(shared: &Arc<Shared<J>>) {
    let me = crate::sys::thread_id();
    let mut state = lock(&shared.state);
    loop {
        while state.queue.is_empty() {
            state.watcher_asleep = true;
            state = shared
                .queued
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.watcher_asleep = false;
        // A cheap check first: did any call start within one interval?
        let seen = state.started;
        drop(state);
        std::thread::sleep(shared.stall_check);
        state = lock(&shared.state);
        if state.queue.is_empty() || state.started != seen || state.idle + state.wakeups > 0 {
            continue;
        }
        // None did: watch one more interval, reading run-queue waits.
        let seen = state.started;
        // The pool's threads and the watcher itself.
        let mut threads: Vec<i32> = state.tids.clone();
        threads.push(me);
        drop(state);
        let waited_before: Vec<Option<u64>> = threads
            .iter()
            .map(|tid| crate::sys::run_queue_wait_ns(*tid))
            .collect();
        std::thread::sleep(shared.stall_check);
        // Short of CPU rather than blocked: a thread waited to run for half
        // the check or more.
        let starved = threads.iter().zip(&waited_before).any(|(tid, before)| {
            let after = crate::sys::run_queue_wait_ns(*tid);
            before.zip(after).is_some_and(|(before, after)| {
                after.saturating_sub(before) >= shared.stall_check.as_nanos() as u64 / 2
            })
        });
        state = lock(&shared.state);
        if !starved
            && !state.queue.is_empty()
            && state.started == seen
            && state.idle + state.wakeups == 0
        {
            // At most as many again as there are: a stall that lasts keeps
            // doubling the pool each check (64 threads in 6 ms), while a
            // single slow moment (a burst of calls read at once) adds few.
            let wanted = state
                .queue
                .len()
                .min(state.threads.max(1))
                .min(shared.max - state.threads.min(shared.max));
            for _ in 0..wanted {
                start_thread(shared, &mut state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    /// A pool of mixed closures, as the tests use.
    type Pool = ActionThreads<Box<dyn FnOnce() + Send>>;

    impl Pool {
        fn run_boxed(&self, job: impl FnOnce() + Send + 'static) {
            self.run(Box::new(job));
        }
    }

    #[test]
    fn a_burst_of_short_calls_queues_for_the_eager_threads() {
        // No stall check within the test: only the eager threads exist,
        // however the machine schedules them.
        let pool: Pool = ActionThreads::with_stall_check(64, Duration::from_secs(3600));
        let (done, finished) = mpsc::channel();
        for _ in 0..1000 {
            let done = done.clone();
            pool.run_boxed(move || {
                let _ = done.send(std::thread::current().id());
            });
        }
        let threads: std::collections::HashSet<_> =
            (0..1000).filter_map(|_| finished.recv().ok()).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            threads.len() <= cores,
            "{} threads for 1000 short calls on {cores} cores",
            threads.len()
        );
    }

    #[test]
    fn every_thread_is_counted_idle_again_once_bursts_are_answered() {
        // Wake-ups sent for a burst are taken (or given back) however the
        // threads race for them: once every call is answered, each thread
        // waits as idle, and no wake-up is left outstanding. (A leak here
        // would leave calls queued with no thread woken for them.)
        let pool: Pool = ActionThreads::with_stall_check(64, Duration::from_secs(3600));
        for _ in 0..50 {
            let (done, finished) = mpsc::channel();
            for _ in 0..20 {
                let done = done.clone();
                pool.run_boxed(move || {
                    let _ = done.send(());
                });
            }
            for _ in 0..20 {
                assert!(finished.recv_timeout(Duration::from_secs(5)).is_ok());
            }
        }
        let started = Instant::now();
        loop {
            let state = lock(&pool.shared.state);
            if state.idle == state.threads && state.wakeups == 0 {
                assert!(state.queue.is_empty());
                break;
            }
            drop(state);
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "threads never all counted idle"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn slow_calls_do_not_hold_up_others() {
        let pool: Pool = ActionThreads::new(64);
        let slow = Arc::new(AtomicUsize::new(0));
        // More sleepers than cores: every eager thread is taken.
        for _ in 0..20 {
            let slow = Arc::clone(&slow);
            pool.run_boxed(move || {
                slow.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(2));
            });
        }
        let (done, finished) = mpsc::channel();
        let started = Instant::now();
        pool.run_boxed(move || {
            let _ = done.send(());
        });
        assert!(finished.recv_timeout(Duration::from_secs(1)).is_ok());
        assert!(started.elapsed() < Duration::from_secs(1));
        // Every sleeper got a thread of its own, well before any woke.
        while slow.load(Ordering::SeqCst) < 20 {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "sleepers waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_burst_that_reaches_idle_threads_and_blocks_them_does_not_hold_up_the_rest() {
        let pool: Pool = ActionThreads::new(64);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Start the eager threads, and let them go idle (the watcher asleep).
        let (warm, warmed) = mpsc::channel();
        for _ in 0..cores {
            let warm = warm.clone();
            pool.run_boxed(move || {
                let _ = warm.send(());
            });
        }
        for _ in 0..cores {
            let _ = warmed.recv_timeout(Duration::from_secs(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        // A burst: each call finds threads idle, and every thread then
        // blocks; no further call comes to wake anyone.
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Arc::new(Mutex::new(blocked));
        for _ in 0..cores {
            let blocked = Arc::clone(&blocked);
            pool.run_boxed(move || {
                let _ = lock(&blocked).recv_timeout(Duration::from_secs(10));
            });
        }
        let (done, finished) = mpsc::channel();
        pool.run_boxed(move || {
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(1)).is_ok(),
            "the last call of the burst waited for a blocked one"
        );
        drop(release);
    }

    #[test]
    fn the_cap_holds_and_queued_calls_run_when_a_thread_frees() {
        let pool: Pool = ActionThreads::new(2);
        let (done, finished) = mpsc::channel();
        for n in 0..4 {
            let done = done.clone();
            pool.run_boxed(move || {
                std::thread::sleep(Duration::from_millis(100));
                let _ = done.send((n, std::thread::current().id()));
            });
        }
        let ran: Vec<_> = (0..4)
            .filter_map(|_| finished.recv_timeout(Duration::from_secs(5)).ok())
            .collect();
        assert_eq!(ran.len(), 4);
        let threads: std::collections::HashSet<_> = ran.iter().map(|(_, t)| *t).collect();
        assert!(
            threads.len() <= 2,
            "{} threads past a cap of 2",
            threads.len()
        );
    }
}
