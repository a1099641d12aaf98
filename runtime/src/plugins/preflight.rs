//! The out-of-process preflight: before the server opens a plugin file,
//! a child process (`switchboard check --json --in-place FILE`) opens it,
//! runs the ABI handshake and reads the descriptor.
//!
//! `dlopen` runs a file's constructors before any check can happen, so a
//! file whose constructor crashes or hangs would take the server down
//! while it was being "validated". In a child it takes down only the
//! child: the server reports why and never opens the file.
//!
//! The child first runs at low priority, so on a saturated core the
//! server's calls come first; one starved for [`STARVED_GRACE`] runs
//! again at the server's priority.

use super::check_process::{ChildProcess, end, finish};
use super::refusal::RefusalKind;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How often the child is polled while it runs.
const POLL: Duration = Duration::from_millis(2);

/// Why a preflight refused a file.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The check ran and refused the file: its kind and reason.
    #[error("{1}")]
    Refused(RefusalKind, String),
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
    /// The kind of refusal, for `/status`.
    pub fn kind(&self) -> RefusalKind {
        match self {
            PreflightError::Refused(kind, _) => *kind,
            PreflightError::Crashed(_) => RefusalKind::PreflightCrashed,
            PreflightError::Hung(_) => RefusalKind::PreflightHung,
            PreflightError::Broken(_) => RefusalKind::PreflightFailed,
        }
    }

    /// Whether the cause may lie outside the file (a killed, starved or
    /// unstartable child), so the same content deserves another try.
    pub fn is_transient(&self) -> bool {
        match self {
            PreflightError::Refused(..) => false,
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
/// The child starts at nice `BACKGROUND_NICE`; one that has been off
/// the CPU for [`STARVED_GRACE`] without finishing is killed and the
/// check runs again at the server's own priority, so a reload waits for
/// a saturated core a bounded time, never indefinitely.
pub fn preflight(copy: &Path, timeout: Duration) -> Result<Preflighted, PreflightError> {
    let started = std::time::Instant::now();
    let checked = preflight_once_or_twice(copy, timeout);
    crate::metrics::global().preflight(started.elapsed());
    checked
}

/// The check at background priority, and again at normal priority if it
/// was starved.
fn preflight_once_or_twice(copy: &Path, timeout: Duration) -> Result<Preflighted, PreflightError> {
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
                // Only a background run is ever judged starved.
                Finished::Starved(_) => Err(PreflightError::Hung(timeout)),
            }
        }
    }
}

/// The priority a preflight child runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// Nice `BACKGROUND_NICE`: the first try of every check.
    Background,
    /// The server's own (inherited) priority: the second try of a check
    /// that was starved in the background.
    Normal,
}

impl Priority {
    /// The nice value the child sets for itself; 0 means it keeps the
    /// one it inherited.
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
    /// It was killed after being off the CPU this long in the background.
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
        .env(NICE_ENV, priority.nice().to_string())
        // A group of its own: whatever its constructors start goes with it.
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| PreflightError::Broken(format!("cannot start the check process: {e}")))?;
    // Drained on their own threads, so a chatty plugin cannot fill a pipe
    // and stall the child into a false "hang".
    let (stdout, stderr) = match (drain(child.stdout.take()), drain(child.stderr.take())) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(e), _) | (_, Err(e)) => {
            end(child);
            return Err(PreflightError::Broken(format!(
                "cannot start a thread to read its output: {e}"
            )));
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.exit_status() {
            Ok(Some(status)) => {
                finish(child);
                break status;
            }
            Ok(None) => {}
            Err(e) => {
                end(child);
                return Err(PreflightError::Broken(format!("waiting for it: {e}")));
            }
        }
        let elapsed = started.elapsed();
        if priority == Priority::Background && elapsed >= STARVED_GRACE {
            let off_cpu = elapsed.saturating_sub(cpu_time(child.id()));
            if off_cpu >= STARVED_GRACE {
                match end(child) {
                    // It finished just before it was killed.
                    Some(status) if status.signal().is_none() => break status,
                    _ => return Ok(Finished::Starved(off_cpu)),
                }
            }
        }
        if has_hung(child.id(), elapsed, timeout) {
            end(child);
            return Ok(Finished::Ran(Err(PreflightError::Hung(timeout))));
        }
        std::thread::sleep(POLL);
    };
    Ok(Finished::Ran(report_of(
        status,
        stdout.collect(),
        stderr.collect(),
    )))
}

/// What a child that exited said, from its status and its pipes.
fn report_of(
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
) -> Result<Preflighted, PreflightError> {
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
    let kind =
        serde_json::from_value(report["error_kind"].clone()).unwrap_or(RefusalKind::InitFailed);
    Err(PreflightError::Refused(
        kind,
        report["error"]
            .as_str()
            .unwrap_or("refused without a reason")
            .to_owned(),
    ))
}

/// Whether a preflight child running for `elapsed` is past `timeout`.
/// On a busy core a child may wait long for a CPU: time it spent
/// runnable but waiting does not count (Linux `/proc/<pid>/schedstat`,
/// which adds a wait when it ends), up to [`STARVED_LIMIT`] times the
/// timeout.
fn has_hung(pid: u32, elapsed: Duration, timeout: Duration) -> bool {
    if elapsed < timeout {
        return false;
    }
    let waited = schedstat(pid, 1).unwrap_or(Duration::ZERO);
    elapsed.saturating_sub(waited) >= timeout || elapsed >= timeout * STARVED_LIMIT
}

/// The CPU time process `pid` has had (zero where that is not known, so
/// a child whose CPU time cannot be read counts as starved once it has
/// run [`STARVED_GRACE`]).
fn cpu_time(pid: u32) -> Duration {
    schedstat(pid, 0).unwrap_or(Duration::ZERO)
}

/// Field `n` of Linux's `/proc/<pid>/schedstat`: 0 is the time spent on
/// a CPU, 1 the time spent runnable but waiting for one.
fn schedstat(pid: u32, n: usize) -> Option<Duration> {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|stats| stats.split_whitespace().nth(n)?.parse::<u64>().ok())
        .map(Duration::from_nanos)
}

/// How many times its timeout a starved preflight child may take in all.
const STARVED_LIMIT: u32 = 10;

/// The nice value of a check's first run: a check of a new build is background work, and on a saturated core the server's
/// calls come first. Measured on one core saturated by calls to an
/// ordinary action, swapping a new build every 250 ms: the calls' p99
/// rose from 1.2 ms to 2.9-3.4 ms with the child at nice 0, and to 2.5 ms
/// at nice 19 (2.2 ms with no preflight at all).
const BACKGROUND_NICE: libc::c_int = 19;

/// How long a check at nice `BACKGROUND_NICE` may be off the CPU
/// (its lifetime less its CPU time) before it is run again at the
/// server's priority. At nice 19 a child gets about 1.5% of a core that
/// one busy thread holds, and that share divided among more; without
/// this bound a reload on a saturated server could wait for many seconds
/// (measured: over 20 s with calls saturating the server's core).
pub const STARVED_GRACE: Duration = Duration::from_millis(500);

/// The environment variable that tells a preflight child the nice value
/// to run at (0: keep the inherited one).
pub const NICE_ENV: &str = "SWITCHBOARD_PREFLIGHT_NICE";

/// The environment variable that tells a preflight child its server's
/// pid (see [`become_preflight_child`]).
pub const PARENT_ENV: &str = "SWITCHBOARD_PREFLIGHT_PARENT";

/// Called first thing in a preflight child: sets its priority (the nice
/// value in [`NICE_ENV`]) and makes it die (SIGKILL) with the server thread
/// that started it, so a server killed mid-preflight leaves no check
/// process behind (one stuck in a hanging constructor would spin
/// forever). That thread waits until the child has exited (another
/// thread reaps it), so it outlives it otherwise. Done in the child
/// rather than between fork and exec, which would cost the server a full
/// `fork` instead of a `posix_spawn`.
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
            // Its first thread, before any other starts (they inherit it).
            crate::sys::lower_thread_priority(nice);
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
///
/// Under an instrumenting tool (valgrind) the kernel's `/proc/self/exe`
/// is the tool, while the link it reports (what `current_exe` reads) is
/// the program: when that link names an existing file other than the one
/// `/proc/self/exe` opens, the link is what was started. A replaced file
/// reads as `… (deleted)`, which does not exist, so a rebuild still
/// re-executes the running image.
fn this_executable() -> Result<std::path::PathBuf, PreflightError> {
    let proc_exe = Path::new("/proc/self/exe");
    if let Ok(running) = std::fs::metadata(proc_exe) {
        if let Ok(started) = std::env::current_exe()
            && let Ok(named) = std::fs::metadata(&started)
            && !same_file(&running, &named)
        {
            return Ok(started);
        }
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
        .map_err(|e| PreflightError::Broken(format!("cannot find this executable: {e}")))
}

/// Whether two metadata describe the same file (device and inode).
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// How long, once the child has exited, its pipes are read for what is
/// left in them (a process it started and let escape its group may hold
/// them open for ever).
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// A pipe being read to its end on a thread of its own.
struct Drained {
    /// What has been read so far.
    text: Arc<Mutex<Vec<u8>>>,
    /// Closed when the thread has read the pipe to its end.
    done: mpsc::Receiver<()>,
}

/// Starts a thread that reads `pipe` to its end.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::io::Result<Drained> {
    let text = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done) = mpsc::channel::<()>();
    let into = Arc::clone(&text);
    std::thread::Builder::new()
        .name("preflight-pipe".into())
        .spawn(move || {
            let _done = done_tx;
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut text) = into.lock() {
                            text.extend_from_slice(chunk.get(..n).unwrap_or_default());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })?;
    Ok(Drained { text, done })
}

impl Drained {
    /// What the pipe said: all of it, or what came within [`PIPE_GRACE`].
    fn collect(self) -> String {
        let _ = self.done.recv_timeout(PIPE_GRACE);
        let text = self.text.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
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
    #![allow(clippy::unwrap_used)]
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

    #[test]
    fn cpu_time_is_read_and_an_unknown_one_is_zero() {
        // This process has run; a pid that cannot exist has no stats.
        assert!(cpu_time(std::process::id()) > Duration::ZERO);
        assert_eq!(cpu_time(u32::MAX), Duration::ZERO);
    }

    /// A pipe that says `text` and then stays open until `open` is
    /// dropped, like one a process started by a constructor holds.
    struct HeldOpen {
        text: Option<&'static [u8]>,
        open: mpsc::Receiver<()>,
    }

    impl Read for HeldOpen {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(text) = self.text.take() {
                buf[..text.len()].copy_from_slice(text);
                return Ok(text.len());
            }
            let _ = self.open.recv();
            Ok(0)
        }
    }

    #[test]
    fn a_pipe_held_open_gives_what_it_said_within_the_grace() {
        let (keep_open, open) = mpsc::channel();
        let drained = drain(Some(HeldOpen {
            text: Some(b"switchboard-preflight-report: {}"),
            open,
        }))
        .unwrap();
        let started = Instant::now();
        assert_eq!(drained.collect(), "switchboard-preflight-report: {}");
        assert!(started.elapsed() >= PIPE_GRACE);
        drop(keep_open);
    }
}
