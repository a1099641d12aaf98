//! Ending the preflight child ([`super::preflight`]) in the one safe
//! order: kill what is left of its process group *before* reaping it,
//! and reap it off the thread that waits for reloads.
//!
//! The child leads a process group of its own. Its number stays reserved
//! only while a member lives, and an exited but unreaped child still
//! counts: once reaped (and with nothing else left in the group) the
//! number is free, and a kill sent to it could reach an unrelated group
//! that took it meanwhile. So the child's exit is observed without
//! reaping it (`waitid` with `WNOWAIT`, which also gives its exit
//! status), its group killed, and only then is it reaped.
//!
//! The reaping itself is left to one `preflight-reap` thread. Reaping is
//! where the kernel flushes the child's `/proc` entries, and on a
//! saturated core that flush was measured taking 20 s (2 of 30 reload
//! storms): done on the watch thread it held back the next reload.
//! That thread runs at nice [`REAPER_NICE`], so that such a flush takes
//! little CPU from the calls. Children wait for it in a queue of at most
//! [`REAP_QUEUE`]; each holds a pid (and counts towards the user's
//! process limit) until it is reaped, so when the queue is full the next
//! child is reaped where it ended, as before.

use std::io;
use std::process::{Child, ExitStatus};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// What ending a child takes; a trait so the order can be tested.
pub(super) trait ChildProcess {
    /// How it ended if it has exited (`None` while it runs), without
    /// reaping it.
    fn exit_status(&mut self) -> io::Result<Option<ExitStatus>>;
    /// Waits until it has exited, without reaping it; how it ended.
    fn wait_exit(&mut self) -> io::Result<ExitStatus>;
    /// Kills every process left in its group (it included).
    fn kill_group(&self);
    /// Kills it.
    fn kill(&mut self);
    /// Hands it, exited and its group killed, to be reaped.
    fn reap_later(self);
}

impl ChildProcess for Child {
    fn exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
        exited_unreaped(self.id(), libc::WNOHANG)
    }

    fn wait_exit(&mut self) -> io::Result<ExitStatus> {
        exited_unreaped(self.id(), 0)?
            .ok_or_else(|| io::Error::other("waitid returned without an exit"))
    }

    fn kill_group(&self) {
        if let Ok(group) = libc::pid_t::try_from(self.id()) {
            // SAFETY: a plain system call; a group with no members left is
            // an error that is ignored.
            let _ = unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }

    fn kill(&mut self) {
        let _ = Child::kill(self);
    }

    fn reap_later(self) {
        send_to_reaper(self);
    }
}

/// How child `pid` ended, read with `waitid(WEXITED | WNOWAIT | flags)`
/// so that it stays unreaped; `None` if, with `WNOHANG` in `flags`, it
/// has not exited yet.
fn exited_unreaped(pid: u32, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    let pid = libc::id_t::from(pid);
    loop {
        // SAFETY: a zeroed `siginfo_t` is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `waitid` writes one `siginfo_t` through the pointer;
        // WNOWAIT leaves the child waitable.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | flags,
            )
        };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // SAFETY: `waitid` filled `info`; with WNOHANG and no change it
        // leaves `si_pid` 0 (as zeroed).
        if unsafe { info.si_pid() } == 0 {
            return Ok(None);
        }
        // SAFETY: for a child's exit `waitid` fills `si_status`.
        let status = unsafe { info.si_status() };
        return exit_status(info.si_code, status).map(Some);
    }
}

/// The wait status `waitpid` would have given for a child that ended as
/// `waitid` reported (`si_code`, `si_status`). Only an exit, a kill and a
/// core dump are asked for (`WEXITED`); anything else is an error.
fn exit_status(code: libc::c_int, status: libc::c_int) -> io::Result<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    match code {
        libc::CLD_EXITED => Ok(ExitStatus::from_raw((status & 0xff) << 8)),
        libc::CLD_KILLED => Ok(ExitStatus::from_raw(status & 0x7f)),
        libc::CLD_DUMPED => Ok(ExitStatus::from_raw((status & 0x7f) | 0x80)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("waitid reported a child's change {other}, not an exit"),
        )),
    }
}

/// Finishes a child that has exited: kills what is left of its group,
/// then hands it to be reaped.
pub(super) fn finish(child: impl ChildProcess) {
    child.kill_group();
    child.reap_later();
}

/// Kills the child and whatever is left in its group, waits for it to
/// die and hands it to be reaped; its exit status, if it could be read.
pub(super) fn end(mut child: impl ChildProcess) -> Option<ExitStatus> {
    child.kill_group();
    child.kill();
    let status = child.wait_exit().ok();
    child.reap_later();
    status
}

/// How many exited children may wait for the reaper thread.
pub(super) const REAP_QUEUE: usize = 128;

/// The thread that reaps finished children, started on first use; `None`
/// if it could not be started (said once, in the log).
fn reaper() -> Option<&'static mpsc::SyncSender<Child>> {
    static REAPER: OnceLock<Option<mpsc::SyncSender<Child>>> = OnceLock::new();
    REAPER
        .get_or_init(|| {
            let (to_reap, children) = mpsc::sync_channel::<Child>(REAP_QUEUE);
            let started = std::thread::Builder::new()
                .name(REAPER_NAME.into())
                .spawn(move || {
                    crate::sys::lower_thread_priority(REAPER_NICE);
                    for mut child in children {
                        reap(&mut child, Reaper::Thread);
                    }
                });
            match started {
                Ok(_) => Some(to_reap),
                Err(e) => {
                    tracing::warn!(
                        "cannot start the thread that reaps preflight children ({e}); the watch thread reaps them"
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// The name of the reaper thread.
const REAPER_NAME: &str = "preflight-reap";

/// The reaper thread's nice value. A slow flush keeps it on the CPU for
/// seconds, in the kernel: at nice 0 it took 63% of a saturated server
/// core from the calls (`perf record` of that core during one), at nice
/// 19 8%. An ordinary reap needs only microseconds of CPU.
const REAPER_NICE: i32 = 19;

/// Has `child` reaped on the reaper thread, or here if there is none or
/// its queue is full.
fn send_to_reaper(child: Child) {
    let unsent = match reaper() {
        Some(reaper) => match reaper.try_send(child) {
            Ok(()) => None,
            Err(mpsc::TrySendError::Full(child) | mpsc::TrySendError::Disconnected(child)) => {
                Some(child)
            }
        },
        None => Some(child),
    };
    if let Some(mut child) = unsent {
        reap(&mut child, Reaper::Here);
    }
}

/// Where a child is reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reaper {
    /// On the reaper thread: a slow reap holds back no reload.
    Thread,
    /// On the thread that ran the preflight.
    Here,
}

/// How long a reap may take before it is logged.
const SLOW_REAP: Duration = Duration::from_secs(1);

/// Reaps `child`, saying so when that was slow.
fn reap(child: &mut Child, on: Reaper) {
    let started = Instant::now();
    let reaped = child.wait();
    let took = started.elapsed();
    #[cfg(test)]
    tests::record_reap(child.id());
    if took >= SLOW_REAP {
        let meanwhile = match on {
            Reaper::Thread => "reloads went on meanwhile",
            Reaper::Here => "the next reload waited for it",
        };
        tracing::warn!(
            pid = child.id(),
            took_ms = took.as_millis() as u64,
            "reaping a finished preflight child was slow (the kernel flushing its /proc entries); {meanwhile}"
        );
    }
    if let Err(e) = reaped {
        tracing::warn!(pid = child.id(), "cannot reap a preflight child: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::rc::Rc;
    use std::sync::Mutex;

    /// The children reaped in this test process: pid and reaping thread.
    static REAPED: Mutex<Vec<(u32, Option<String>)>> = Mutex::new(Vec::new());

    /// Notes that child `pid` was reaped on the current thread.
    pub(super) fn record_reap(pid: u32) {
        let thread = std::thread::current().name().map(str::to_owned);
        if let Ok(mut reaped) = REAPED.lock() {
            reaped.push((pid, thread));
        }
    }

    /// The name of the thread that reaped child `pid`, once it has.
    fn reaped_by(pid: u32) -> Option<Option<String>> {
        let reaped = REAPED.lock().unwrap_or_else(|e| panic!("{e}"));
        reaped
            .iter()
            .find(|(reaped, _)| *reaped == pid)
            .map(|(_, thread)| thread.clone())
    }

    /// What was done to a [`Recorded`] child, in order.
    type Calls = Rc<RefCell<Vec<&'static str>>>;

    /// A child that records what is done to it.
    struct Recorded {
        calls: Calls,
    }

    /// A [`Recorded`] child and its record.
    fn recorded() -> (Recorded, Calls) {
        let calls = Calls::default();
        let child = Recorded {
            calls: Rc::clone(&calls),
        };
        (child, calls)
    }

    impl ChildProcess for Recorded {
        fn exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
            self.calls.borrow_mut().push("exit_status");
            Ok(Some(ExitStatus::from_raw(0)))
        }
        fn wait_exit(&mut self) -> io::Result<ExitStatus> {
            self.calls.borrow_mut().push("wait_exit");
            Ok(ExitStatus::from_raw(0))
        }
        fn kill_group(&self) {
            self.calls.borrow_mut().push("kill_group");
        }
        fn kill(&mut self) {
            self.calls.borrow_mut().push("kill");
        }
        fn reap_later(self) {
            self.calls.borrow_mut().push("reap_later");
        }
    }

    #[test]
    fn the_group_is_killed_before_the_child_is_handed_to_be_reaped() {
        let (exited, calls) = recorded();
        finish(exited);
        assert_eq!(*calls.borrow(), ["kill_group", "reap_later"]);
        let (running, calls) = recorded();
        assert!(end(running).is_some());
        assert_eq!(
            *calls.borrow(),
            ["kill_group", "kill", "wait_exit", "reap_later"]
        );
    }

    #[test]
    fn waitid_reports_read_as_wait_statuses() {
        let status = |code, status| exit_status(code, status).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status(libc::CLD_EXITED, 3).code(), Some(3));
        let killed = status(libc::CLD_KILLED, libc::SIGKILL);
        assert_eq!(killed.signal(), Some(libc::SIGKILL));
        let dumped = status(libc::CLD_DUMPED, libc::SIGSEGV);
        assert_eq!(dumped.signal(), Some(libc::SIGSEGV));
        assert!(dumped.core_dumped());
        assert!(
            exit_status(libc::CLD_STOPPED, libc::SIGSTOP).is_err(),
            "a stop is not an exit"
        );
    }

    /// The state letter of process `pid` (`Z` for a zombie), or `None`
    /// once it has been reaped.
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// Waits (at most 20 s) until child `pid` has been reaped; the name
    /// of the thread that reaped it.
    fn reaped(pid: u32) -> Option<String> {
        let started = Instant::now();
        loop {
            if let Some(thread) = reaped_by(pid) {
                assert_eq!(state(pid), None, "child {pid} is gone once reaped");
                return thread;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "child {pid} was never reaped (state {:?})",
                state(pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts `sh -c script` in a process group of its own, as the
    /// preflight child is.
    fn spawn(script: &str) -> Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("sh: {e}"))
    }

    #[test]
    fn a_real_child_is_seen_to_exit_unreaped_then_reaped_off_this_thread() {
        let mut child = spawn("exit 3");
        let pid = child.id();
        let started = Instant::now();
        let status = loop {
            match child.exit_status() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waitid: {e}"),
            }
            assert!(started.elapsed().as_secs() < 20, "sh never exited");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(state(pid), Some('Z'), "seen to exit, not yet reaped");
        finish(child);
        assert_eq!(reaped(pid).as_deref(), Some(REAPER_NAME));
        assert_eq!(reaper_nice(), Some(REAPER_NICE), "the reaper runs niced");
    }

    /// The nice value of this process's reaper thread (field 19 of its
    /// `stat`), if it runs.
    fn reaper_nice() -> Option<i32> {
        let tasks = std::fs::read_dir("/proc/self/task").ok()?;
        tasks.flatten().find_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if name.trim() != REAPER_NAME {
                return None;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            stat.rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(16)?
                .parse()
                .ok()
        })
    }

    #[test]
    fn an_ended_child_reports_the_kill_and_is_reaped_off_this_thread() {
        let child = spawn("sleep 30");
        let pid = child.id();
        let status = end(child);
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL));
        assert_eq!(reaped(pid).as_deref(), Some(REAPER_NAME));
    }
}
