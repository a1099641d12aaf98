//! Ending the preflight child ([`super::preflight`]) in the one safe
//! order: kill what is left of its process group *before* reaping it.
//!
//! The child leads a process group of its own. Its number stays reserved
//! only while a member lives, and an exited but unreaped child still
//! counts: once reaped (and with nothing else left in the group) the
//! number is free, and a kill sent to it could reach an unrelated group
//! that took it meanwhile. So the child's exit is observed without
//! reaping it (`waitid` with `WNOWAIT`), its group killed, and only then
//! is it reaped.

use std::io;
use std::process::{Child, ExitStatus};

/// What ending a child takes; a trait so the order can be tested.
pub(super) trait ChildProcess {
    /// Whether it has exited, without reaping it.
    fn exited(&mut self) -> io::Result<bool>;
    /// Kills every process left in its group (it included).
    fn kill_group(&self);
    /// Kills it.
    fn kill(&mut self);
    /// Waits for it and reaps it.
    fn reap(&mut self) -> io::Result<ExitStatus>;
}

impl ChildProcess for Child {
    fn exited(&mut self) -> io::Result<bool> {
        let pid = libc::id_t::from(self.id());
        // SAFETY: a zeroed `siginfo_t` is a valid value to be filled in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `waitid` writes one `siginfo_t` through the pointer;
        // WNOWAIT leaves the child waitable, WNOHANG returns at once.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `waitid` filled `info`; with WNOHANG and no change it
        // leaves `si_pid` 0.
        Ok(unsafe { info.si_pid() } != 0)
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

    fn reap(&mut self) -> io::Result<ExitStatus> {
        self.wait()
    }
}

/// If the child has exited: kills what is left of its group, then reaps
/// it and returns how it ended. `None` while it runs.
pub(super) fn finish_if_exited(child: &mut impl ChildProcess) -> io::Result<Option<ExitStatus>> {
    if !child.exited()? {
        return Ok(None);
    }
    child.kill_group();
    child.reap().map(Some)
}

/// Kills the child and whatever is left in its group, then reaps it; its
/// exit status, if it could be read.
pub(super) fn end(child: &mut impl ChildProcess) -> Option<ExitStatus> {
    child.kill_group();
    child.kill();
    child.reap().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::unix::process::CommandExt;
    use std::os::unix::process::ExitStatusExt;

    /// A child that records what is done to it.
    struct Recorded {
        exited: bool,
        calls: RefCell<Vec<&'static str>>,
    }

    impl ChildProcess for Recorded {
        fn exited(&mut self) -> io::Result<bool> {
            Ok(self.exited)
        }
        fn kill_group(&self) {
            self.calls.borrow_mut().push("kill_group");
        }
        fn kill(&mut self) {
            self.calls.borrow_mut().push("kill");
        }
        fn reap(&mut self) -> io::Result<ExitStatus> {
            self.calls.borrow_mut().push("reap");
            Ok(ExitStatus::from_raw(0))
        }
    }

    #[test]
    fn the_group_is_killed_before_the_child_is_reaped() {
        let mut running = Recorded {
            exited: false,
            calls: RefCell::default(),
        };
        assert!(matches!(finish_if_exited(&mut running), Ok(None)));
        assert!(
            running.calls.borrow().is_empty(),
            "a running child is left alone"
        );
        let mut exited = Recorded {
            exited: true,
            calls: RefCell::default(),
        };
        assert!(matches!(finish_if_exited(&mut exited), Ok(Some(_))));
        assert_eq!(*exited.calls.borrow(), ["kill_group", "reap"]);
        let mut ended = Recorded {
            exited: false,
            calls: RefCell::default(),
        };
        assert!(end(&mut ended).is_some());
        assert_eq!(*ended.calls.borrow(), ["kill_group", "kill", "reap"]);
    }

    #[test]
    fn a_real_child_is_seen_to_exit_without_being_reaped() {
        let spawned = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .process_group(0)
            .spawn();
        let mut child = spawned.unwrap_or_else(|e| panic!("sh: {e}"));
        let started = std::time::Instant::now();
        let status = loop {
            match finish_if_exited(&mut child) {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => panic!("waitid: {e}"),
            }
            assert!(started.elapsed().as_secs() < 20, "sh never exited");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(status.code(), Some(3));
    }
}
