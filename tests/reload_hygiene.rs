//! Shadow-copy hygiene and loader concurrency, black-box: two real servers
//! sharing one actions folder and one shadow base, a server killed with
//! SIGKILL in the middle of a swap, and ten plugin files changed at once.
//! Plugin builds are ones cargo made (variants of
//! `tests/plugins/reload-probe`); the servers' private copies, their
//! preflight children and their fate are read from the real file system
//! and the real `/proc`.
//!
//! Each test runs with `RUST_BACKTRACE` unset and set to 1, like the rest
//! of the reload suite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchboard_tests::{
    Server, ServerConfig, WAIT, control, identity, install_into, plugin, probe_variant,
    wait_changed,
};

/// The probe's file name in the actions folder.
const PROBE: &str = "libprobe.so";

/// Both settings of `RUST_BACKTRACE` every test runs under.
const BACKTRACE_MODES: [Option<&str>; 2] = [None, Some("1")];

fn variant(version: &str) -> PathBuf {
    probe_variant(version, &[("PROBE_VERSION", version)])
}

/// A server on `actions` whose shadow base is `shadow`.
fn start(backtrace: Option<&str>, actions: &Path, shadow: &Path, args: &[&str]) -> Server {
    let mut config = ServerConfig::default()
        .plugins(&[])
        .env("RUST_BACKTRACE", backtrace)
        .actions_folder(actions)
        .shadow_base(shadow)
        .arg("--reload-debounce-ms")
        .arg("40");
    for arg in args {
        config = config.arg(arg);
    }
    config.start()
}

/// Every generation `/status` lists, oldest first.
fn generations(server: &Server) -> Vec<Value> {
    let mut all = server.status()["generations"].as_array().unwrap().clone();
    all.sort_by_key(|g| g["generation"].as_u64().unwrap());
    all
}

/// `/status`'s refused files: file name (last component) to reason.
fn refused(server: &Server) -> BTreeMap<String, String> {
    server.status()["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let file = Path::new(r["file"].as_str().unwrap());
            (
                file.file_name().unwrap().to_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The folder a server keeps its private copies in: `<base>/<pid>/`,
/// with the base resolved (as the server resolves it, and as
/// `/proc/<pid>/maps` names mapped files).
fn own_shadow(base: &Path, pid: u32) -> PathBuf {
    base.canonicalize().unwrap().join(pid.to_string())
}

/// The names in `folder`, sorted.
fn names_in(folder: &Path) -> BTreeSet<String> {
    std::fs::read_dir(folder)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", folder.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// The preflight children (`switchboard check ... --in-place COPY`) that
/// process `pid` runs right now, each with the copy it opens.
fn preflights(pid: u32) -> Vec<(u32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if let Some(copy) = preflight_copy(child) {
                found.push((child, copy));
            }
        }
    }
    found
}

/// The copy process `pid` preflights, if it is a preflight child (between
/// fork and exec its command line is still the server's).
fn preflight_copy(pid: u32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let is_preflight = args.iter().any(|a| a == "check") && args.iter().any(|a| a == "--in-place");
    is_preflight.then(|| PathBuf::from(args.last().unwrap()))
}

/// A preflight child that should die with the server: killed (by its pid,
/// and only while it still is that preflight) when dropped, so a test that
/// fails leaves no process spinning.
struct Orphan {
    pid: u32,
    copy: PathBuf,
}

impl Drop for Orphan {
    fn drop(&mut self) {
        if preflight_copy(self.pid).as_deref() == Some(self.copy.as_path()) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_actions_folder_and_one_shadow_base_both_load_twenty_swaps_without_cross_talk()
 {
    let (v1, v2) = (variant("v1"), variant("v2"));
    for backtrace in BACKTRACE_MODES {
        let began = Instant::now();
        let actions = tempfile::tempdir().unwrap();
        let shadow = tempfile::tempdir().unwrap();
        install_into(actions.path(), PROBE, &v1);
        let servers = [
            start(backtrace, actions.path(), shadow.path(), &[]),
            start(backtrace, actions.path(), shadow.path(), &[]),
        ];
        let mut controls = Vec::new();
        for server in &servers {
            let mut control = control(server).await;
            assert_eq!(identity(&mut control).await["version"], "v1");
            controls.push(control);
        }
        let mut expected = vec!["v1"];
        for n in 1..=20 {
            let (from, version) = if n % 2 == 1 { (&v2, "v2") } else { (&v1, "v1") };
            // One write to the shared folder; both servers take it at once.
            servers[0].install(PROBE, from);
            expected.push(version);
            for (server, control) in servers.iter().zip(&mut controls) {
                let changed = wait_changed(control, PROBE).await;
                assert_eq!(
                    changed["version"],
                    version,
                    "swap {n} on server {}: {changed}",
                    server.pid()
                );
            }
            for (server, control) in servers.iter().zip(&mut controls) {
                assert_eq!(
                    identity(control).await["version"],
                    version,
                    "swap {n} on server {}",
                    server.pid()
                );
                assert_eq!(refused(server), BTreeMap::new(), "swap {n}");
            }
        }
        let mut every_image = BTreeSet::new();
        for server in &servers {
            let own = own_shadow(shadow.path(), server.pid());
            let loaded = generations(server);
            let versions: Vec<&str> = loaded
                .iter()
                .map(|g| g["version"].as_str().unwrap())
                .collect();
            assert_eq!(versions, expected, "server {}: {loaded:?}", server.pid());
            for g in &loaded {
                let image = Path::new(g["image"].as_str().unwrap());
                assert_eq!(
                    image.parent(),
                    Some(own.as_path()),
                    "server {}'s image is not in its own folder: {g}",
                    server.pid()
                );
                let name = image.file_name().unwrap().to_str().unwrap();
                assert!(
                    name.starts_with(&format!("libprobe.{}.", server.pid())),
                    "{g}"
                );
                assert!(
                    every_image.insert(image.to_path_buf()),
                    "two generations share the image {}",
                    image.display()
                );
                if g["state"] == "serving" {
                    assert!(image.exists(), "the serving copy is gone: {g}");
                }
            }
            // Each version loaded exactly once, and no refusal ever
            // happened, not even one that cleared again.
            let loads = server
                .log()
                .lines()
                .filter(|l| l.contains("plugin generation loaded"))
                .count();
            assert_eq!(loads, expected.len(), "{}", server.log());
            assert!(
                !server.log().contains("plugin refused"),
                "server {} refused something:\n{}",
                server.pid(),
                server.log()
            );
        }
        assert_eq!(every_image.len(), 2 * expected.len());
        // Each server's folder, and nothing else, under the shared base.
        let folders: BTreeSet<String> = servers.iter().map(|s| s.pid().to_string()).collect();
        assert_eq!(names_in(shadow.path()), folders);
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: two servers, 20 swaps each, in {:?}",
            began.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_swap_leaves_its_copies_and_the_next_server_on_that_shadow_base_removes_them()
 {
    let (v1, v2) = (variant("v1"), variant("v2"));
    let hang = probe_variant("ctor-hang", &[("PROBE_CTOR", "hang")]);
    for backtrace in BACKTRACE_MODES {
        let began = Instant::now();
        let actions = tempfile::tempdir().unwrap();
        let shadow = tempfile::tempdir().unwrap();
        install_into(actions.path(), PROBE, &v1);
        // A preflight that would hang for a minute: the swap is stuck
        // half-way (copy taken, being checked) until the kill.
        let mut dead = start(
            backtrace,
            actions.path(),
            shadow.path(),
            &["--preflight-timeout-ms", "60000"],
        );
        let dead_pid = dead.pid();
        let stale = own_shadow(shadow.path(), dead_pid);
        let mut before = control(&dead).await;
        assert_eq!(identity(&mut before).await["version"], "v1");
        let serving_image =
            PathBuf::from(generations(&dead)[0]["image"].as_str().unwrap().to_owned());
        dead.install(PROBE, &hang);
        let started = Instant::now();
        let (child, candidate) = loop {
            if let Some(found) = preflights(dead_pid)
                .into_iter()
                .find(|(_, copy)| copy.parent() == Some(stale.as_path()))
            {
                break found;
            }
            assert!(
                started.elapsed() < WAIT,
                "the swap never reached its preflight"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        // If the test fails, the guard ends the preflight child.
        let orphan = Orphan {
            pid: child,
            copy: candidate.clone(),
        };
        let status = dead.kill();
        assert_eq!(status.signal(), Some(9), "{status}");
        // The preflight child (stuck in a hanging constructor) dies with
        // the server: none is left spinning.
        let killed = Instant::now();
        while preflight_copy(child).as_deref() == Some(candidate.as_path()) {
            assert!(
                killed.elapsed() < WAIT,
                "the preflight child {child} outlived the server"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(orphan);
        // What the crash left: the serving copy and the half-taken one.
        let left = names_in(&stale);
        for copy in [&serving_image, &candidate] {
            let name = copy.file_name().unwrap().to_str().unwrap();
            assert!(
                left.contains(name),
                "{name} is not among the copies left: {left:?}"
            );
        }

        install_into(actions.path(), PROBE, &v2);
        let next = start(backtrace, actions.path(), shadow.path(), &[]);
        assert!(
            !stale.exists(),
            "the dead server's copies are still there: {:?}",
            names_in(&stale)
        );
        assert!(
            next.log()
                .lines()
                .any(|l| l.contains("left by a process that is gone")
                    && l.contains(&stale.display().to_string())),
            "{}",
            next.log()
        );
        let mut after = control(&next).await;
        assert_eq!(identity(&mut after).await["version"], "v2");
        let own = own_shadow(shadow.path(), next.pid());
        for g in generations(&next) {
            let image = Path::new(g["image"].as_str().unwrap());
            assert_eq!(image.parent(), Some(own.as_path()), "{g}");
        }
        assert_eq!(refused(&next), BTreeMap::new());
        assert_eq!(
            names_in(shadow.path()),
            BTreeSet::from([next.pid().to_string()])
        );
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: killed mid-swap, {} stale copies removed at the restart, in {:?}",
            left.len(),
            began.elapsed()
        );
    }
}

/// The first `keep` bytes of the file `from`.
fn cut(from: &Path, keep: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(from).unwrap();
    bytes.truncate(keep);
    bytes
}

/// A position-independent executable: a complete ELF object for this
/// machine that `dlopen` refuses (the reason is the dynamic loader's own
/// `dlerror` text).
fn an_executable() -> PathBuf {
    ["/bin/true", "/usr/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("a /bin/true to use as an executable that is no library")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_files_changed_at_once_are_preflighted_one_at_a_time_and_each_refusal_names_its_own_file_and_reason()
 {
    let (v1, v2) = (variant("v1"), variant("v2"));
    let segv = probe_variant("ctor-segv", &[("PROBE_CTOR", "segv")]);
    let hang = probe_variant("ctor-hang", &[("PROBE_CTOR", "hang")]);
    let len = std::fs::metadata(&v1).unwrap().len() as usize;
    let (half, most) = (len / 2, len - 1000);
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // Two good builds claim the same paths: one loads, the other is
    // refused naming the first. The others are bad, each its own way;
    // every reason must carry what is particular to its own file.
    let good = ["lib01-good.so", "lib02-rival.so"];
    let files: Vec<(&str, PathBuf, Vec<String>)> = vec![
        (good[0], v1.clone(), vec![]),
        (good[1], v2.clone(), vec![]),
        (
            "lib03-half.so",
            write("half", &cut(&v1, half)),
            vec!["truncated".into(), format!("the file has {half} bytes")],
        ),
        (
            "lib04-most.so",
            write("most", &cut(&v1, most)),
            vec!["truncated".into(), format!("the file has {most} bytes")],
        ),
        (
            "lib05-text.so",
            write("text", b"plain text, no library in sight\n"),
            vec!["not an ELF file".into()],
        ),
        (
            "lib06-exe.so",
            an_executable(),
            vec!["cannot dynamically load position-independent executable".into()],
        ),
        (
            "lib07-nosym.so",
            plugin("not_a_plugin"),
            vec!["exports no `switchboard_plugin_v1` symbol".into()],
        ),
        (
            "lib08-future.so",
            plugin("future_abi"),
            vec!["built for plugin ABI version 2".into()],
        ),
        ("lib09-segv.so", segv, vec!["SIGSEGV".into()]),
        (
            "lib10-hang.so",
            hang,
            vec!["did not finish within 1.5s".into()],
        ),
    ];
    let stem = |name: &str| name.trim_end_matches(".so").to_owned();
    for backtrace in BACKTRACE_MODES {
        let began = Instant::now();
        let actions = tempfile::tempdir().unwrap();
        let shadow = tempfile::tempdir().unwrap();
        let server = start(
            backtrace,
            actions.path(),
            shadow.path(),
            &["--preflight-timeout-ms", "1500"],
        );
        let own = own_shadow(shadow.path(), server.pid());
        let mut control = control(&server).await;

        // Watch the server's preflight children from now on.
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, pid) = (Arc::clone(&stop), server.pid());
            std::thread::spawn(move || {
                let mut most_at_once = 0;
                let mut seen = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let now = preflights(pid);
                    most_at_once = most_at_once.max(now.len());
                    seen.extend(now.into_iter().map(|(_, copy)| copy));
                    std::thread::sleep(Duration::from_millis(2));
                }
                (most_at_once, seen)
            })
        };

        // All ten staged beside the folder's plugins, then renamed into
        // place back to back: ten changes at once.
        for (name, from, _) in &files {
            std::fs::copy(from, actions.path().join(format!(".{name}.staged"))).unwrap();
        }
        for (name, _, _) in &files {
            std::fs::rename(
                actions.path().join(format!(".{name}.staged")),
                actions.path().join(name),
            )
            .unwrap();
        }

        // One good build serves (whichever was taken first)...
        let (push, _) = control
            .recv_until(|m| m["method"] == "rpc.event" && m["params"]["event"] == "actions.changed")
            .await;
        let winner_file = push["params"]["data"]["file"].as_str().unwrap().to_owned();
        let winner = *good
            .iter()
            .find(|g| winner_file.ends_with(*g))
            .unwrap_or_else(|| panic!("a bad file loaded: {push}"));
        let loser = *good.iter().find(|g| **g != winner).unwrap();
        let (winner_version, loser_version) = if winner == good[0] {
            ("v1", "v2")
        } else {
            ("v2", "v1")
        };
        assert_eq!(identity(&mut control).await["version"], winner_version);

        // ...and all nine others are refused, each for its own reason.
        let mut wanted: BTreeMap<String, Vec<String>> = files
            .iter()
            .filter(|(name, _, _)| !good.contains(name))
            .map(|(name, _, needles)| (name.to_string(), needles.clone()))
            .collect();
        wanted.insert(
            loser.to_owned(),
            vec![
                format!("plugin reload-probe {loser_version} claims"),
                format!("plugin reload-probe {winner_version} from"),
                winner.to_owned(),
                "already provides".to_owned(),
            ],
        );
        let started = Instant::now();
        let reasons = loop {
            let now = refused(&server);
            let complete = wanted.iter().all(|(name, needles)| {
                now.get(name)
                    .is_some_and(|reason| needles.iter().all(|n| reason.contains(n.as_str())))
            });
            if complete {
                break now;
            }
            assert!(
                started.elapsed() < WAIT,
                "not every file was refused as expected; wanted {wanted:#?}\nrefused {now:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::Relaxed);
        let (most_at_once, seen) = watcher.join().unwrap();

        assert_eq!(
            reasons.keys().collect::<Vec<_>>(),
            wanted.keys().collect::<Vec<_>>(),
            "{reasons:#?}"
        );
        for (name, reason) in &reasons {
            // Nothing of another file's: no other file's name (the rival
            // names the one that owns its paths) and no other's figures.
            for (other, _, _) in &files {
                if *other != name.as_str() && !(name == loser && *other == winner) {
                    assert!(
                        !reason.contains(&stem(other)),
                        "{name}'s reason names {other}: {reason}"
                    );
                }
            }
            for (other, needles) in &wanted {
                if other != name {
                    for needle in needles.iter().filter(|n| n.contains(" bytes")) {
                        assert!(
                            !reason.contains(needle.as_str()),
                            "{name}'s reason has {other}'s figures: {reason}"
                        );
                    }
                }
            }
            assert!(
                !reason.contains(own.to_str().unwrap()),
                "{name}'s reason names a private copy: {reason}"
            );
            assert!(
                reason.chars().all(|c| !c.is_control()),
                "{name}'s reason is garbled: {reason:?}"
            );
        }

        // The loads were serialized: never two preflights at once, though
        // seven files needed one (one of them hung for 1.5 s).
        assert_eq!(most_at_once, 1, "preflights ran side by side: {seen:?}");
        let hang_copy = seen.iter().find(|c| {
            c.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("lib10-hang.")
        });
        assert!(
            hang_copy.is_some(),
            "the hanging preflight went unseen: {seen:?}"
        );
        for copy in &seen {
            assert_eq!(copy.parent(), Some(own.as_path()), "{copy:?}");
        }
        // Refused candidates leave no copy behind: only the serving image.
        let serving = generations(&server);
        assert_eq!(serving.len(), 1, "{serving:?}");
        let image = Path::new(serving[0]["image"].as_str().unwrap());
        assert!(
            image
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{}.", stem(winner))),
            "{image:?}"
        );
        assert_eq!(
            names_in(&own),
            BTreeSet::from([image.file_name().unwrap().to_str().unwrap().to_owned()])
        );
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: ten files at once, {} preflights seen, in {:?}",
            seen.len(),
            began.elapsed()
        );
    }
}
