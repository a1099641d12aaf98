//! The preflight's priority, black-box: a check runs at low priority so
//! the server's calls come first, but a reload never waits indefinitely
//! for a saturated core.
//!
//! The real server is pinned to one CPU that busy loops at normal
//! priority saturate; a new build of the reload probe (one cargo made) is
//! installed and must serve. A file of its own: the busy loops would slow
//! every test running beside them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use switchboard_tests::{Server, ServerConfig, control, identity, probe_variant, wait_changed};

/// The probe's file name in the actions folder.
const PROBE: &str = "libprobe.so";

/// Both settings of `RUST_BACKTRACE` every reload test runs under.
const BACKTRACE_MODES: [Option<&str>; 2] = [None, Some("1")];

/// How many busy loops saturate the CPU: at nice 19 a check gets about
/// 15/(4 x 1024 + 15) of it, under 0.4%, so the 10-200 ms of CPU its
/// constructor takes (see [`variant`]) cannot finish inside the 500 ms
/// grace.
const SPINNERS: usize = 4;

/// The most the server may take to notice a starved check: the 500 ms
/// grace plus its own polling, on a core it shares with the busy loops.
/// Without the bound, checks waited over 20 s.
const NOTICED_WITHIN_MS: u64 = 5_000;

/// A build of the probe whose constructor computes for 10 ms (release)
/// to 200 ms (debug) (`PROBE_CTOR=busy`), so a check of it needs the CPU
/// for longer than a starved one gets in the grace, yet the check run
/// again at normal priority, a sixth of the core, ends in about a second
/// (with five times the work it took 5 s, and past the 20 s wait on a busy
/// CI machine).
fn variant(version: &str) -> PathBuf {
    probe_variant(
        version,
        &[("PROBE_VERSION", version), ("PROBE_CTOR", "busy")],
    )
}

/// The last CPU this process may run on (from `Cpus_allowed_list`).
fn a_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    allowed.trim().rsplit([',', '-']).next().unwrap().to_owned()
}

/// Busy loops pinned to one CPU at normal priority. Each stops by
/// itself after a minute and is killed when this is dropped.
struct Spinners(Vec<Child>);

impl Spinners {
    fn on(cpu: &str) -> Spinners {
        let mut spinners = Spinners(Vec::new());
        for _ in 0..SPINNERS {
            // Pushed one by one: if one cannot start, those that did are
            // killed when `spinners` drops.
            spinners.0.push(
                Command::new("taskset")
                    .args(["-c", cpu, "bash", "-c"])
                    .arg("while [ $SECONDS -lt 60 ]; do :; done")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("taskset (util-linux) and bash start"),
            );
        }
        spinners
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for spinner in &mut self.0 {
            let _ = spinner.kill();
            let _ = spinner.wait();
        }
    }
}

/// Pins every thread of `server` to `cpu`; the preflight children it
/// starts inherit that.
fn pin(server: &Server, cpu: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &server.pid().to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset runs");
    assert!(status.success(), "taskset could not pin the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_starved_on_a_saturated_core_runs_again_at_normal_priority_and_the_new_build_serves()
 {
    let v1 = variant("priority-1");
    let v2 = variant("priority-2");
    for backtrace in BACKTRACE_MODES {
        let server = ServerConfig::default()
            .plugins(&[])
            .env("RUST_BACKTRACE", backtrace)
            // The test reads the server's info-level log.
            .env("RUST_LOG", Some("info"))
            .arg("--reload-debounce-ms")
            .arg("40")
            .plugin_file(PROBE, &v1)
            .start();
        let mut control = control(&server).await;
        // Signed in: an anonymous connection is closed after auth_timeout_ms
        // (10 s), which a reload on a saturated core may outlast.
        let mut client = server.connect_as("priority").await;
        assert_eq!(identity(&mut client).await["version"], "priority-1");

        let cpu = a_cpu();
        pin(&server, &cpu);
        let spinners = Spinners::on(&cpu);
        server.install(PROBE, &v2);
        let pushed = wait_changed(&mut control, PROBE).await;
        drop(spinners);

        assert_eq!(
            identity(&mut client).await["version"],
            "priority-2",
            "after {pushed}"
        );
        let log = server.log();
        assert!(
            log.contains(
                "the preflight waited for a CPU at low priority; checking again at normal priority"
            ),
            "the check of the new build was never starved, so this test proved nothing; log:\n{log}"
        );
        let waited_ms: u64 = log
            .split("waited_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|ms| ms.parse().ok())
            .expect("the restart names how long the check waited");
        assert!(
            (500..NOTICED_WITHIN_MS).contains(&waited_ms),
            "a starved check was noticed after {waited_ms} ms; log:\n{log}"
        );
    }
}
