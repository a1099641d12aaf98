//! The server's few direct calls into the C library, outside plugin
//! loading: the open-file limit, handing freed memory back to the OS, who
//! the server runs as, a thread's id and time spent waiting for a CPU
//! (for the action pool's growth), the action threads' scheduling
//! policy, and a background thread's priority.
//! Each `unsafe` block here says why it is sound.

/// Raises this process's soft open-file limit to its hard limit (which an
/// unprivileged process may do) and returns the limit then in force, or
/// `None` if it cannot be read.
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` through the pointer, which
    // points to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the `rlimit` it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the open-file limit"
            );
            limit.rlim_cur = limit.rlim_max;
        }
    }
    // RLIM_INFINITY is u64::MAX: any count of connections fits.
    Some(limit.rlim_cur)
}

/// Hands memory the allocator holds free back to the OS. glibc keeps
/// freed heap for reuse: without this, a server that once held a burst of
/// large messages (history, slow consumers' queues) would stay at that
/// peak after freeing them. Takes a few milliseconds on a large heap: call
/// it after freeing a lot, not on every free.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers; it only walks the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The user id this process acts as (which owns the files it creates).
pub fn effective_uid() -> u32 {
    // SAFETY: `geteuid` takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The kernel's id of the calling thread (what `/proc/self/task/<id>`
/// names).
pub fn thread_id() -> i32 {
    // SAFETY: `gettid` takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// How long thread `tid` of this process has waited, ready to run, for a
/// CPU so far, in nanoseconds (the second field of the kernel's
/// `schedstat`); `None` where the kernel does not say.
pub fn run_queue_wait_ns(tid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    stat.split_whitespace().nth(1)?.parse().ok()
}

/// Lowers the calling thread's priority to nice `nice` (Linux gives each
/// thread its own nice value, set through its id). For background work
/// that must not take CPU from the calls on a saturated core: the
/// preflight child and the thread that reaps it. `false` where the kernel
/// refused.
pub fn lower_thread_priority(nice: i32) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(tid) = libc::id_t::try_from(thread_id()) else {
            return false;
        };
        // SAFETY: a plain system call on the calling thread; lowering a
        // priority needs no privilege.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = nice;
        false
    }
}

/// Asks the kernel not to let the calling thread preempt others when it
/// wakes (Linux's `SCHED_BATCH`, at the same nice level: the same share
/// of CPU, only no wake-up preemption). For the action pool's threads: a
/// call handed to an idle one then waits for the runtime's worker to
/// finish its turn (a few calls read, a few replies written) instead of
/// taking the core from it at once, one call at a time. `false` where the
/// kernel refused or has no such policy.
pub fn defer_on_wakeup() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` only reads the `sched_param` it is
        // given; pid 0 is the calling thread. SCHED_BATCH needs no
        // privilege (priority 0 is its only priority).
        unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}
