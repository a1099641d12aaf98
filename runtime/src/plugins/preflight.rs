//! The out-of-process preflight: before the server opens a plugin file,
//! a child process (`switchboard check --json FILE`) opens it, runs the
//! ABI handshake and reads the descriptor.
//!
//! `dlopen` runs a file's constructors before any check can happen, so a
//! file whose constructor crashes or hangs would take the server down
//! while it was being "validated". In a child it takes down only the
//! child: the server reports why and never opens the file.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the child is polled while it runs.
const POLL: Duration = Duration::from_millis(2);

/// Why a preflight refused a file.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The check ran and refused the file.
    #[error("{0}")]
    Refused(String),
    /// The child died of a signal: a constructor or the entry crashed
    /// (or something outside killed it).
    #[error(
        "it crashed the preflight process with {} (in its constructors or entry function); the server never opened it",
        signal_name(*.0)
    )]
    Crashed(i32),
    /// The child ran past its deadline.
    #[error(
        "the preflight did not finish within {0:?} (its constructors or entry function hang); the server never opened it"
    )]
    Hung(Duration),
    /// The child could not be started or spoke nonsense.
    #[error("the preflight could not run: {0}")]
    Broken(String),
}

impl PreflightError {
    /// Whether the cause may lie outside the file (a killed, starved or
    /// unstartable child), so the same content deserves another try.
    pub fn is_transient(&self) -> bool {
        match self {
            PreflightError::Refused(_) => false,
            PreflightError::Crashed(signal) => *signal == 9,
            PreflightError::Hung(_) | PreflightError::Broken(_) => true,
        }
    }
}

/// The marker before the report on the child's stdout: a plugin that
/// prints to stdout while it loads cannot be mistaken for the report.
pub const REPORT_MARKER: &str = "switchboard-preflight-report: ";

/// What the preflight learned of a plugin that loads.
#[derive(Debug, Clone)]
pub struct Preflighted {
    /// Its name and version, as in "plugin echo 0.1.0".
    pub label: String,
    /// The action paths it claims.
    pub paths: Vec<String>,
}

/// Runs `switchboard check --json --in-place copy` in a child process
/// (this same executable) under `timeout`; says what loaded there.
///
/// The child starts at low priority (see [`Priority::Background`]); one
/// that has waited [`STARVED_GRACE`] for a CPU without finishing is
/// killed and the check runs again at normal priority, so a reload
/// waits for a saturated core a bounded time, never indefinitely.
pub fn preflight(copy: &Path, timeout: Duration) -> Result<Preflighted, PreflightError> {
    match run_check(copy, timeout, Priority::Background)? {
        Finished::Ran(report) => report,
        Finished::Starved(waited) => {
            tracing::info!(
                file = %copy.display(),
                waited_ms = waited.as_millis() as u64,
                "the preflight waited for a CPU at low priority; checking again at normal priority"
            );
            match run_check(copy, timeout, Priority::Normal)? {
                Finished::Ran(report) => report,
                Finished::Starved(_) => Err(PreflightError::Hung(timeout)),
            }
        }
    }
}

/// The priority a preflight child runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Nice [`BACKGROUND_NICE`]: on a saturated core the server's calls
    /// come first; the first try of every check.
    Background,
    /// The server's own priority: the second try of a check that was
    /// starved at [`Priority::Background`].
    Normal,
}

impl Priority {
    /// The nice value a child at this priority sets for itself.
    fn nice(self) -> libc::c_int {
        match self {
            Priority::Background => BACKGROUND_NICE,
            Priority::Normal => 0,
        }
    }
}

/// How one run of the child ended.
enum Finished {
    /// It ran to the end: what it reported.
    Ran(Result<Preflighted, PreflightError>),
    /// It was killed after waiting this long for a CPU at background
    /// priority.
    Starved(Duration),
}

/// One run of the check process at `priority`. `Err` only when it could
/// not be started or waited for.
fn run_check(
    copy: &Path,
    timeout: Duration,
    priority: Priority,
) -> Result<Finished, PreflightError> {
    let exe = this_executable()?;
    let mut command = Command::new(exe);
    command
        .arg("check")
        .arg("--json")
        .arg("--in-place")
        .arg(copy)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env(PARENT_ENV, std::process::id().to_string())
        .env(NICE_ENV, priority.nice().to_string());
    let mut child = command
        .spawn()
        .map_err(|e| PreflightError::Broken(format!("cannot start the check process: {e}")))?;
    // Drained on their own threads, so a chatty plugin cannot fill a pipe
    // and stall the child into a false "hang".
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if has_hung(child.id(), started.elapsed(), timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Finished::Ran(Err(PreflightError::Hung(timeout))));
            }
            Ok(None) if priority == Priority::Background => {
                let waited = waited_for_cpu(child.id());
                if waited >= STARVED_GRACE {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Finished::Starved(waited));
                }
                std::thread::sleep(POLL);
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => return Err(PreflightError::Broken(format!("waiting for it: {e}"))),
        }
    };
    Ok(Finished::Ran(report_of(status, stdout, stderr)))
}

/// What a child that exited said, from its status and its pipes.
fn report_of<O: Read, E: Read>(
    status: std::process::ExitStatus,
    stdout: Result<std::thread::JoinHandle<String>, Option<O>>,
    stderr: Result<std::thread::JoinHandle<String>, Option<E>>,
) -> Result<Preflighted, PreflightError> {
    let stdout = collected(stdout);
    let stderr = collected(stderr);
    if let Some(signal) = status.signal() {
        return Err(PreflightError::Crashed(signal));
    }
    let report: serde_json::Value = stdout
        .lines()
        .find_map(|line| line.strip_prefix(REPORT_MARKER))
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or_else(|| {
            PreflightError::Broken(format!(
                "it printed no report ({status}); its last words: {}",
                last_line(&stderr)
            ))
        })?;
    if report["ok"].as_bool() == Some(true) {
        let paths = report["actions"]
            .as_array()
            .map(|actions| {
                actions
                    .iter()
                    .filter_map(|a| a["path"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let field = |key: &str| report[key].as_str().unwrap_or("?").to_owned();
        return Ok(Preflighted {
            label: format!("plugin {} {}", field("name"), field("version")),
            paths,
        });
    }
    Err(PreflightError::Refused(
        report["error"]
            .as_str()
            .unwrap_or("refused without a reason")
            .to_owned(),
    ))
}

/// Whether a preflight child running for `elapsed` is past `timeout`. The
/// child runs at low priority, so on a busy core it may wait long for a
/// CPU: time it spent runnable but waiting does not count (Linux
/// `/proc/<pid>/schedstat`), up to [`STARVED_LIMIT`] times the timeout.
fn has_hung(pid: u32, elapsed: Duration, timeout: Duration) -> bool {
    if elapsed < timeout {
        return false;
    }
    let starved = waited_for_cpu(pid);
    elapsed.saturating_sub(starved) >= timeout || elapsed >= timeout * STARVED_LIMIT
}

/// How long process `pid` has been runnable but waiting for a CPU (the
/// second field of Linux's `/proc/<pid>/schedstat`); zero where that is
/// not known.
fn waited_for_cpu(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|stats| stats.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// How many times its timeout a starved preflight child may take in all.
const STARVED_LIMIT: u32 = 10;

/// The nice value of a check at [`Priority::Background`]: a check of a
/// new build is background work, and on a saturated core the server's
/// calls come first. Measured on one core saturated by calls to an
/// ordinary action, swapping a new build every 250 ms: the calls' p99
/// rose from 1.2 ms to 2.9-3.4 ms with the child at nice 0, and to 2.5 ms
/// at nice 19 (2.2 ms with no preflight at all).
const BACKGROUND_NICE: libc::c_int = 19;

/// How long a check at [`Priority::Background`] may wait for a CPU
/// before it is run again at [`Priority::Normal`]. At nice 19 a child
/// gets about 1.5% of a core that one busy thread holds, less with
/// more; without this bound a reload on a saturated server could wait
/// for many seconds (measured: over 20 s with calls saturating the
/// server's core).
pub const STARVED_GRACE: Duration = Duration::from_millis(500);

/// The environment variable that tells a preflight child the nice value
/// to run at (see [`Priority`]).
pub const NICE_ENV: &str = "SWITCHBOARD_PREFLIGHT_NICE";

/// The environment variable that tells a preflight child its server's
/// pid (see [`become_preflight_child`]).
pub const PARENT_ENV: &str = "SWITCHBOARD_PREFLIGHT_PARENT";

/// Called first thing in a preflight child: sets its priority (the nice
/// value in [`NICE_ENV`], see [`Priority`]) and makes it die (SIGKILL) with the server thread
/// that started it, so a server killed mid-preflight leaves no check
/// process behind (one stuck in a hanging constructor would spin
/// forever). That thread waits for the child, so it outlives it
/// otherwise. Done in the child rather than between fork and exec, which
/// would cost the server a full `fork` instead of a `posix_spawn`.
pub fn become_preflight_child() {
    let Some(server) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
    else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        let nice = std::env::var(NICE_ENV)
            .ok()
            .and_then(|nice| nice.parse::<libc::c_int>().ok())
            .unwrap_or(0);
        if nice != 0 {
            // SAFETY: a plain system call on this process.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        }
        // SAFETY: plain system calls on this process.
        let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == 0;
        // The server may have gone before the prctl took effect.
        // SAFETY: getppid cannot fail.
        if !armed || unsafe { libc::getppid() } as u32 != server {
            std::process::exit(1);
        }
    }
}

/// This very executable. On Linux `/proc/self/exe`, which still opens
/// after the file on disk was replaced (a rebuild of the server while it
/// runs); elsewhere the path it was started from.
fn this_executable() -> Result<std::path::PathBuf, PreflightError> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
        .map_err(|e| PreflightError::Broken(format!("cannot find this executable: {e}")))
}

/// Reads a pipe to its end on a thread of its own; `Err` (the pipe back)
/// when no thread can be started.
fn drain<R: Read + Send + 'static>(
    pipe: Option<R>,
) -> Result<std::thread::JoinHandle<String>, Option<R>> {
    let shared = std::sync::Arc::new(std::sync::Mutex::new(pipe));
    let reader = std::sync::Arc::clone(&shared);
    let spawned = std::thread::Builder::new()
        .name("preflight-pipe".into())
        .spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = reader.lock().ok().and_then(|mut p| p.take()) {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
    spawned.map_err(|_| shared.lock().ok().and_then(|mut p| p.take()))
}

/// What a drained pipe said: from its thread, or read now.
fn collected<R: Read>(drained: Result<std::thread::JoinHandle<String>, Option<R>>) -> String {
    match drained {
        Ok(thread) => thread.join().unwrap_or_default(),
        Err(pipe) => {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        }
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing)")
}

/// "SIGSEGV (signal 11)", or the number alone for a rare one.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    format!("{name} (signal {signal})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_not_spent_waiting_for_a_cpu_counts_towards_a_hang() {
        let second = Duration::from_secs(1);
        let me = std::process::id();
        // Before the timeout: never hung.
        assert!(!has_hung(me, second / 2, second));
        // A process with no stats (gone): wall time counts.
        assert!(has_hung(u32::MAX, second, second));
        // This process has waited for a CPU for less than its whole life,
        // so a wall time far past its timeout is a hang; and past the
        // starved limit it is one whatever the stats say.
        assert!(has_hung(me, second * 3600, second));
        assert!(has_hung(me, second * STARVED_LIMIT, second));
    }
}
