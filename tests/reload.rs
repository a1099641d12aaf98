//! Hot reload, black-box: the real server watching a real folder, plugin
//! builds that cargo made (variants of `tests/plugins/reload-probe`), real
//! sockets, and every way a file can change under it.
//!
//! Each test runs with `RUST_BACKTRACE` unset and set to 1 (a caught
//! panic pins a library image only with backtraces on), and `/status` is
//! checked against the server's real `/proc/<pid>/maps`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchboard_tests::{
    Client, Server, ServerConfig, WAIT, control, error_code, identity, plugin, probe_variant,
    wait_changed,
};

/// The probe's file name in the actions folder.
const PROBE: &str = "libprobe.so";

/// Both settings of `RUST_BACKTRACE` every test runs under.
const BACKTRACE_MODES: [Option<&str>; 2] = [None, Some("1")];

fn variant(version: &str) -> PathBuf {
    probe_variant(version, &[("PROBE_VERSION", version)])
}

fn start(backtrace: Option<&str>, files: &[(&str, &Path)], args: &[&str]) -> Server {
    let mut config = ServerConfig::default()
        .plugins(&[])
        .env("RUST_BACKTRACE", backtrace);
    if !args.contains(&"--reload-debounce-ms") {
        config = config.arg("--reload-debounce-ms").arg("40");
    }
    for (name, from) in files {
        config = config.plugin_file(name, from);
    }
    for arg in args {
        config = config.arg(arg);
    }
    config.start()
}

/// Installs `from` as `name` and waits for the `actions.changed` push
/// that says a new generation of it serves; returns that push's data.
async fn swap(server: &Server, control: &mut Client, name: &str, from: &Path) -> Value {
    server.install(name, from);
    wait_changed(control, name).await
}

fn generations(server: &Server) -> Vec<Value> {
    server.status()["generations"].as_array().unwrap().clone()
}

fn generation(server: &Server, number: u64) -> Value {
    generations(server)
        .into_iter()
        .find(|g| g["generation"] == number)
        .unwrap_or_else(|| panic!("no generation {number} in {:?}", generations(server)))
}

/// Waits until generation `number` is in one of `states`.
fn wait_state(server: &Server, number: u64, states: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let g = generation(server, number);
        if states.iter().any(|s| g["state"] == *s) {
            return g;
        }
        assert!(
            start.elapsed() < WAIT,
            "generation {number} never reached {states:?}: {g}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server process maps `image`, read from its real maps.
fn really_mapped(server: &Server, image: &str) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    maps.lines().any(|l| {
        let path = l.splitn(6, ' ').nth(5).map(str::trim_start).unwrap_or("");
        path == image || path.strip_suffix(" (deleted)") == Some(image)
    })
}

/// `/status` tells the truth about every retired generation: those it
/// calls unmapped are gone from the real maps, the rest are there.
fn assert_status_truthful(server: &Server) {
    for g in generations(server) {
        let image = g["image"].as_str().unwrap();
        match g["state"].as_str().unwrap() {
            "unmapped" => assert!(
                !really_mapped(server, image),
                "said unmapped but mapped: {g}"
            ),
            // Being closed right now: either may be true this instant.
            "closing" => {}
            "retired_mapped" => {
                // It may have unmapped since (threads exit); then the next
                // sweep says so. Either way it was said with a reason.
                assert!(g["reason"].as_str().is_some_and(|r| !r.is_empty()), "{g}");
            }
            _ => assert!(
                really_mapped(server, image),
                "said loaded but not mapped: {g}"
            ),
        }
    }
}

fn refusal(server: &Server, name: &str) -> Option<String> {
    server.status()["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with(name))
        .map(|r| r["reason"].as_str().unwrap().to_owned())
}

/// The kind of `/status`'s refusal of `name`, if it is refused.
fn refusal_kind(server: &Server, name: &str) -> Option<String> {
    server.status()["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with(name))
        .map(|r| r["kind"].as_str().unwrap().to_owned())
}

/// Waits until `/status` refuses `name` with a reason containing `needle`.
fn wait_refused(server: &Server, name: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some(reason) = refusal(server, name)
            && reason.contains(needle)
        {
            return reason;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name} never refused with {needle:?}; refused: {:?}",
            refusal(server, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One call a load worker made.
#[derive(Debug)]
struct Served {
    /// How many swaps had been confirmed when it started.
    started_at_swap: usize,
    instance: u64,
    version: String,
    self_version: String,
    slept: bool,
}

/// Calls `probe/version` (or, for every tenth connection, a 5 s
/// `probe/sleep`) in a loop until `stop`; every reply must be a result.
async fn load_worker(
    mut client: Client,
    slow: bool,
    swaps: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
) {
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let started_at_swap = swaps.load(Ordering::SeqCst);
        let (method, params) = if slow {
            ("probe/sleep", json!({"ms": 5000}))
        } else {
            ("probe/version", json!({}))
        };
        client.request(id, method, params).await;
        let (reply, _) = client.recv_until(|m| m["id"] == id).await;
        let result = reply
            .get("result")
            .unwrap_or_else(|| panic!("a call failed during swaps: {reply}"));
        served.lock().unwrap().push(Served {
            started_at_swap,
            instance: result["instance"].as_u64().unwrap(),
            version: result["version"].as_str().unwrap().to_owned(),
            self_version: result["self_version"].as_str().unwrap().to_owned(),
            slept: slow,
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_swaps_under_load_fail_no_call_and_route_every_new_call_to_the_new_generation() {
    let (v1, v2) = (variant("v1"), variant("v2"));
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &v1)], &[]);
        let mut control = control(&server).await;
        // instances[k] is the generation serving after swap k.
        let mut instances = vec![identity(&mut control).await["instance"].as_u64().unwrap()];
        let swaps = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for n in 0..50 {
            let client = server.connect_as(&format!("load-{n}")).await;
            workers.push(tokio::spawn(load_worker(
                client,
                n % 10 == 0,
                Arc::clone(&swaps),
                Arc::clone(&stop),
                Arc::clone(&served),
            )));
        }
        for n in 1..=100 {
            let from = if n % 2 == 1 { &v2 } else { &v1 };
            swap(&server, &mut control, PROBE, from).await;
            let now = identity(&mut control).await;
            let expected = if n % 2 == 1 { "v2" } else { "v1" };
            assert_eq!(now["version"], expected, "after swap {n}");
            instances.push(now["instance"].as_u64().unwrap());
            swaps.store(n, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
        let served = served.lock().unwrap();
        let slept_across_swaps = served
            .iter()
            .filter(|s| s.slept)
            .filter(|s| instances.iter().position(|i| *i == s.instance).unwrap() < 100)
            .count();
        assert!(
            served.len() > 1000,
            "only {} calls were made; the load is too thin to prove anything",
            served.len()
        );
        for s in served.iter() {
            let at = instances
                .iter()
                .position(|i| *i == s.instance)
                .unwrap_or_else(|| panic!("served by an unknown generation: {s:?}"));
            // Every call that started after swap k was confirmed ran on
            // generation k or a later one, never an older one...
            assert!(
                at >= s.started_at_swap,
                "served by an old generation: {s:?}"
            );
            // ...and a call in flight finishes on the generation it began
            // on (one swap may have been under way as it started).
            if s.slept {
                assert!(at <= s.started_at_swap + 1, "a running call moved: {s:?}");
            }
            assert_eq!(s.version, if at % 2 == 1 { "v2" } else { "v1" }, "{s:?}");
            // Its own exported function is its own, not an older image's.
            assert_eq!(s.self_version, s.version, "{s:?}");
        }
        assert!(slept_across_swaps > 0, "no 5 s call overlapped a swap");
        assert_status_truthful(&server);
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: {} calls, 100 swaps, 0 failed",
            served.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_second_call_on_v1_finishes_on_v1_after_swaps_to_v2_v3_and_v4() {
    let versions: Vec<PathBuf> = ["v1", "v2", "v3", "v4"]
        .iter()
        .map(|v| variant(v))
        .collect();
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &versions[0])], &[]);
        let mut control = control(&server).await;
        let v1 = identity(&mut control).await;
        let v1_generation = server.status()["plugins"][0]["generation"]
            .as_u64()
            .unwrap();
        let mut slow = server.connect_as("slow").await;
        slow.request(1, "probe/sleep", json!({"ms": 10_000})).await;
        // The call has started once the generation counts it.
        let start = Instant::now();
        while generation(&server, v1_generation)["calls"]
            .as_u64()
            .unwrap()
            < 2
        {
            assert!(start.elapsed() < WAIT, "the 10 s call never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let swapping = Instant::now();
        for (n, from) in versions.iter().enumerate().skip(1) {
            swap(&server, &mut control, PROBE, from).await;
            assert_eq!(
                identity(&mut control).await["version"],
                format!("v{}", n + 1)
            );
        }
        eprintln!("three swaps took {:?}", swapping.elapsed());
        let draining = generation(&server, v1_generation);
        assert_eq!(draining["state"], "draining", "{draining}");
        let (reply, _) = slow.recv_until(|m| m["id"] == 1).await;
        assert_eq!(reply["result"]["version"], "v1", "{reply}");
        assert_eq!(reply["result"]["instance"], v1["instance"], "{reply}");
        // Drained: closed, and /status says truthfully what became of it.
        let retired = wait_state(&server, v1_generation, &["unmapped", "retired_mapped"]);
        assert_eq!(retired["calls"], 2, "{retired}");
        assert_status_truthful(&server);
    }
}

/// Overwrites `target` in place, like `cp`: same inode, truncated, then
/// written. A loaded library would crash if it were this file.
fn cp_in_place(from: &Path, target: &Path) {
    std::fs::copy(from, target).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_torture_never_crashes_and_loads_each_complete_content_exactly_once() {
    let (v1, v2, v3) = (variant("v1"), variant("v2"), variant("v3"));
    for backtrace in BACKTRACE_MODES {
        let mut server = start(backtrace, &[(PROBE, &v1)], &["--reload-debounce-ms", "200"]);
        let mut control = control(&server).await;
        let target = server.action_file(PROBE);
        let mut expected_versions = vec!["v1"];

        // cp over the watched file (same inode, written in place).
        cp_in_place(&v2, &target);
        wait_changed(&mut control, PROBE).await;
        expected_versions.push("v2");
        assert_eq!(identity(&mut control).await["version"], "v2");

        // Truncated in place: refused, v2 keeps serving.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap()
            .set_len(0)
            .unwrap();
        wait_refused(&server, PROBE, "not a loadable library");
        assert_eq!(identity(&mut control).await["version"], "v2");

        // Unlinked, then a hard link into place (what cargo does).
        let linked = server.actions_dir.path().join(".v1-source");
        std::fs::copy(&v1, &linked).unwrap();
        std::fs::remove_file(&target).unwrap();
        std::fs::hard_link(&linked, &target).unwrap();
        wait_changed(&mut control, PROBE).await;
        expected_versions.push("v1");
        assert_eq!(identity(&mut control).await["version"], "v1");

        // A slow writer: 1 byte per ms for the first 1000 bytes, then the
        // rest in chunks, with a 1 s pause mid-file (past the debounce, so
        // the half-written file is looked at and must not load).
        let bytes = std::fs::read(&v3).unwrap();
        {
            use std::io::Write;
            std::fs::remove_file(&target).unwrap();
            let mut file = std::fs::File::create(&target).unwrap();
            for byte in &bytes[..1000] {
                file.write_all(std::slice::from_ref(byte)).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            let half = bytes.len() / 2;
            for chunk in bytes[1000..half].chunks(256 * 1024) {
                file.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(identity(&mut control).await["version"], "v1");
            for chunk in bytes[half..].chunks(256 * 1024) {
                file.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        wait_changed(&mut control, PROBE).await;
        expected_versions.push("v3");
        assert_eq!(identity(&mut control).await["version"], "v3");

        // 20 touches without a change: nothing reloads.
        let before = generations(&server).len();
        for _ in 0..20 {
            std::fs::File::options()
                .write(true)
                .open(&target)
                .unwrap()
                .set_modified(std::time::SystemTime::now())
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        // Then one real change, which must be the only new generation.
        cp_in_place(&v2, &target);
        wait_changed(&mut control, PROBE).await;
        expected_versions.push("v2");
        assert_eq!(generations(&server).len(), before + 1);

        // Exactly one load per distinct complete content, in order, and
        // never a partial file.
        let mut loaded: Vec<Value> = generations(&server);
        loaded.sort_by_key(|g| g["generation"].as_u64().unwrap());
        let versions: Vec<&str> = loaded
            .iter()
            .map(|g| g["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, expected_versions, "{loaded:?}");
        assert!(server.is_running(), "the server crashed");
        assert_status_truthful(&server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_build_writing_the_watched_folder_hot_reloads_once() {
    // A target folder of its own: cargo writes the artifact into
    // `<target>/debug/`, which is the server's actions folder.
    let target_dir = switchboard_tests::artifacts()
        .parent()
        .unwrap()
        .join("reload-cargo-test");
    let build = |version: &str| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(switchboard_tests::workspace_root())
            .args(["build", "--quiet", "-p", "reload-probe"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("PROBE_VERSION", version)
            .env("PROBE_CTOR", "")
            .env("PROBE_INIT", "")
            .env("PROBE_RESTORE", "")
            .status()
            .unwrap();
        assert!(status.success());
    };
    for (mode, backtrace) in BACKTRACE_MODES.into_iter().enumerate() {
        let (first, second) = (format!("cargo-{mode}a"), format!("cargo-{mode}b"));
        build(&first);
        let folder = target_dir.join("debug");
        let server = ServerConfig::default()
            .plugins(&[])
            .arg("--reload-debounce-ms")
            .arg("200")
            .actions_folder(&folder)
            .env("RUST_BACKTRACE", backtrace)
            .start();
        let mut control = control(&server).await;
        assert_eq!(identity(&mut control).await["version"], first.as_str());
        build(&second);
        wait_changed(&mut control, "libreload_probe.so").await;
        assert_eq!(identity(&mut control).await["version"], second.as_str());
        let mut loaded = generations(&server);
        loaded.sort_by_key(|g| g["generation"].as_u64().unwrap());
        let versions: Vec<String> = loaded
            .iter()
            .map(|g| g["version"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(versions, [first, second], "one load per build");
    }
}

/// The file with its ELF `e_machine` changed to AArch64.
fn other_architecture(from: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(from).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_file_is_refused_while_the_old_generation_answers_every_call() {
    let v1 = variant("v1");
    let v2 = variant("v2");
    let segv = probe_variant("ctor-segv", &[("PROBE_CTOR", "segv")]);
    let hang = probe_variant("ctor-hang", &[("PROBE_CTOR", "hang")]);
    let init_panics = probe_variant("init-panics", &[("PROBE_INIT", "panic")]);
    let v2_bytes = std::fs::read(&v2).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // What each is, the file, words of its reason, its kind on /status.
    let bad: Vec<(&str, PathBuf, &str, &str)> = vec![
        (
            "not a library",
            write("garbage", b"not an ELF file at all"),
            "not an ELF file",
            "not_a_library",
        ),
        (
            "truncated",
            write("truncated", &v2_bytes[..v2_bytes.len() / 2]),
            "truncated",
            "not_a_library",
        ),
        (
            "wrong architecture",
            write("arm", &other_architecture(&v2)),
            "another architecture",
            "not_a_library",
        ),
        (
            "no entry symbol",
            plugin("not_a_plugin"),
            "exports no `switchboard_plugin_v1` symbol",
            "not_a_plugin",
        ),
        (
            "wrong ABI",
            plugin("future_abi"),
            "ABI version",
            "abi_mismatch",
        ),
        (
            "panicking init",
            init_panics,
            "entry function failed",
            "init_failed",
        ),
        ("crashing constructor", segv, "SIGSEGV", "preflight_crashed"),
        (
            "hanging constructor",
            hang,
            "did not finish within",
            "preflight_hung",
        ),
        (
            "a path another plugin owns",
            plugin("path_thief"),
            "already provides",
            "path_conflict",
        ),
    ];
    for backtrace in BACKTRACE_MODES {
        let echo = plugin("echo");
        let server = start(
            backtrace,
            &[(PROBE, &v1), ("libecho.so", &echo)],
            &["--preflight-timeout-ms", "1500"],
        );
        let mut control = control(&server).await;
        let v1_identity = identity(&mut control).await;
        // A caller that keeps calling throughout.
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut caller = server.connect_as("caller").await;
        let caller_task = {
            let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
            let expected = v1_identity["instance"].clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let reply = caller.call("probe/version", json!({})).await;
                    assert_eq!(reply["result"]["instance"], expected, "{reply}");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        for (kind, file, reason, code) in &bad {
            server.install(PROBE, file);
            let said = wait_refused(&server, PROBE, reason);
            assert!(said.len() > 20, "{kind}: {said}");
            assert_eq!(
                refusal_kind(&server, PROBE).as_deref(),
                Some(*code),
                "{kind}"
            );
            assert_eq!(
                identity(&mut control).await["instance"],
                v1_identity["instance"],
                "{kind}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        caller_task.await.unwrap();
        assert!(
            calls.load(Ordering::Relaxed) > 10,
            "the caller hardly called"
        );
        // The serving content put back: the last refusal goes from /status.
        server.install(PROBE, &v1);
        let start = Instant::now();
        while refusal(&server, PROBE).is_some() {
            assert!(
                start.elapsed() < WAIT,
                "the refusal stayed: {:?}",
                refusal(&server, PROBE)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // A plugin that prints to stdout while loading is no problem.
        let prints = probe_variant("prints", &[("PROBE_INIT", "print")]);
        swap(&server, &mut control, PROBE, &prints).await;
        // After all that, a good file loads.
        swap(&server, &mut control, PROBE, &v2).await;
        assert_eq!(identity(&mut control).await["version"], "v2");
        assert!(refusal(&server, PROBE).is_none());
        assert_status_truthful(&server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_twenty_swaps_and_a_refused_restore_keeps_the_old_generation() {
    let (v1, v2) = (variant("v1"), variant("v2"));
    let refuses = probe_variant("refuses-state", &[("PROBE_RESTORE", "refuse")]);
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &v1)], &[]);
        let mut control = control(&server).await;
        let mut expected = 0;
        for n in 1..=20 {
            for _ in 0..3 {
                expected += 1;
                let reply = control.call("probe/count", json!({})).await;
                assert_eq!(reply["result"]["count"], expected, "{reply}");
            }
            let changed = swap(
                &server,
                &mut control,
                PROBE,
                if n % 2 == 1 { &v2 } else { &v1 },
            )
            .await;
            let number = changed["generation"].as_u64().unwrap();
            assert_eq!(
                generation(&server, number)["handoff"],
                json!({"outcome": "restored", "bytes": 9})
            );
        }
        let serving = identity(&mut control).await;
        server.install(PROBE, &refuses);
        let reason = wait_refused(&server, PROBE, "refused the state");
        assert!(reason.contains("PROBE_RESTORE=refuse"), "{reason}");
        assert_eq!(
            identity(&mut control).await["instance"],
            serving["instance"]
        );
        let reply = control.call("probe/count", json!({})).await;
        assert_eq!(reply["result"]["count"], expected + 1, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_the_new_set_at_once_and_logs_name_the_generation() {
    for backtrace in BACKTRACE_MODES {
        clients_see_changes(backtrace).await;
    }
}

async fn clients_see_changes(backtrace: Option<&str>) {
    let v1 = variant("v1");
    let server = start(backtrace, &[(PROBE, &v1)], &[]);
    let mut control = control(&server).await;
    // An anonymous connection may not subscribe.
    let mut anonymous = server.connect().await;
    let refused = anonymous
        .call("rpc.subscribe", json!({"event": "actions.changed"}))
        .await;
    assert_eq!(error_code(&refused), Some(-32001), "{refused}");
    let unknown = control
        .call("rpc.subscribe", json!({"event": "nope"}))
        .await;
    assert_eq!(error_code(&unknown), Some(-32602), "{unknown}");

    // A new file: its actions appear, announced.
    let added = swap(&server, &mut control, "libkv.so", &plugin("kv")).await;
    assert!(
        added["added"]
            .as_array()
            .unwrap()
            .contains(&json!("kv/get")),
        "{added}"
    );
    let listed = control.call("rpc.actions", Value::Null).await;
    assert!(listed["result"].to_string().contains("kv/get"), "{listed}");

    // Logs from each generation carry its number.
    control.call("probe/log", json!({})).await;
    let number = server.status()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "reload-probe")
        .unwrap()["generation"]
        .as_u64()
        .unwrap();
    server.wait_for_log("probe says hello from v1");
    assert!(
        server
            .log()
            .lines()
            .any(|l| l.contains("probe says hello from v1")
                && l.contains(&format!("generation={number}"))),
        "{}",
        server.log()
    );

    // A removed file: new calls get -32601 while a running call finishes.
    let mut slow = server.connect_as("slow").await;
    slow.request(7, "probe/sleep", json!({"ms": 1500})).await;
    let start = Instant::now();
    while generation_calls(&server, number) < 2 {
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(server.action_file(PROBE)).unwrap();
    let removed = wait_changed(&mut control, PROBE).await;
    assert!(
        removed["removed"]
            .as_array()
            .unwrap()
            .contains(&json!("probe/version")),
        "{removed}"
    );
    let gone = control.call("probe/version", json!({})).await;
    assert_eq!(error_code(&gone), Some(-32601), "{gone}");
    let (finished, _) = slow.recv_until(|m| m["id"] == 7).await;
    assert_eq!(finished["result"]["version"], "v1", "{finished}");
}

fn generation_calls(server: &Server, number: u64) -> u64 {
    generation(server, number)["calls"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_pinned_by_thread_locals_is_reported_mapped_and_two_hundred_swaps_stay_bounded() {
    let (v1, v2) = (variant("v1"), variant("v2"));
    let image_bytes = std::fs::metadata(&v1).unwrap().len();
    for backtrace in BACKTRACE_MODES {
        let mut server = start(backtrace, &[(PROBE, &v1)], &["--max-generations", "256"]);
        let mut control = control(&server).await;
        // A plain generation (no thread-local touched) unmaps once drained.
        let plain = server.status()["plugins"][0]["generation"]
            .as_u64()
            .unwrap();
        identity(&mut control).await;
        swap(&server, &mut control, PROBE, &v2).await;
        let retired = wait_state(&server, plain, &["unmapped", "retired_mapped"]);
        assert_eq!(
            retired["state"], "unmapped",
            "a plain plugin stayed mapped: {retired}"
        );

        // Touch a thread_local! with Drop on the workers, then swap, 200 times.
        let rss_before = server.rss_kib();
        let mut clients = Vec::new();
        for n in 0..4 {
            clients.push(server.connect_as(&format!("tls-{n}")).await);
        }
        let mut pinned = Vec::new();
        for n in 0..200 {
            for client in &mut clients {
                let reply = client.call("probe/tls", json!({})).await;
                assert!(reply.get("result").is_some(), "{reply}");
            }
            let generation = server.status()["plugins"][0]["generation"]
                .as_u64()
                .unwrap();
            pinned.push(generation);
            swap(
                &server,
                &mut control,
                PROBE,
                if n % 2 == 0 { &v1 } else { &v2 },
            )
            .await;
        }
        assert!(server.is_running());
        let rss_growth = server.rss_kib().saturating_sub(rss_before) * 1024;
        // The documented bound: at most one image per retained generation.
        assert!(
            rss_growth < 200 * image_bytes,
            "RSS grew {rss_growth} bytes over 200 pinned generations of a {image_bytes}-byte image"
        );
        let first = wait_state(&server, pinned[0], &["retired_mapped", "unmapped"]);
        assert_eq!(first["state"], "retired_mapped", "{first}");
        assert!(
            first["reason"].as_str().unwrap().contains("thread-local"),
            "{first}"
        );
        assert!(really_mapped(&server, first["image"].as_str().unwrap()));
        assert_status_truthful(&server);
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: 200 pinned swaps grew RSS by {} KiB ({} KiB per generation; image {} KiB)",
            rss_growth / 1024,
            rss_growth / 1024 / 200,
            image_bytes / 1024
        );
        // Thread-local destructors of 200 generations run as the worker
        // threads exit at shutdown: a clean exit, no crash.
        drop(clients);
        server.signal_term();
        let status = server.wait_exit();
        assert!(
            status.success(),
            "the server did not exit cleanly: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_generations_a_reload_is_refused_as_busy_and_retried_when_one_goes() {
    let (v1, v2, v3) = (variant("v1"), variant("v2"), variant("v3"));
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &v1)], &["--max-generations", "1"]);
        let mut control = control(&server).await;
        let v1_generation = server.status()["plugins"][0]["generation"]
            .as_u64()
            .unwrap();
        let mut slow = server.connect_as("slow").await;
        slow.request(1, "probe/sleep", json!({"ms": 3000})).await;
        let start = Instant::now();
        while generation_calls(&server, v1_generation) < 1 {
            assert!(start.elapsed() < WAIT, "the slow call never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        // v1 drains (one retained generation: the cap), v2 serves.
        swap(&server, &mut control, PROBE, &v2).await;
        // v3 would make two: refused as busy, v2 keeps serving.
        server.install(PROBE, &v3);
        let reason = wait_refused(&server, PROBE, "busy");
        assert!(reason.contains("max_generations = 1"), "{reason}");
        assert_eq!(identity(&mut control).await["version"], "v2");
        // The slow call finishes on v1; v1 goes; v3 is taken then.
        let (reply, _) = slow.recv_until(|m| m["id"] == 1).await;
        assert_eq!(reply["result"]["version"], "v1", "{reply}");
        wait_changed(&mut control, PROBE).await;
        assert_eq!(identity(&mut control).await["version"], "v3");
        assert_status_truthful(&server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_constructor_crashes_is_refused_at_start_and_the_server_serves_the_rest() {
    let v1 = variant("v1");
    let segv = probe_variant("ctor-segv", &[("PROBE_CTOR", "segv")]);
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &v1), ("libcrash.so", &segv)], &[]);
        let reason = wait_refused(&server, "libcrash.so", "SIGSEGV");
        assert!(reason.contains("the server never opened it"), "{reason}");
        let mut control = control(&server).await;
        assert_eq!(identity(&mut control).await["version"], "v1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_generation_s_shutdown_hook_frees_its_port_and_it_unmaps_once_the_thread_pinning_it_exits()
 {
    let (v1, v2) = (variant("v1"), variant("v2"));
    for backtrace in BACKTRACE_MODES {
        let server = start(backtrace, &[(PROBE, &v1)], &[]);
        let mut control = control(&server).await;
        let v1_generation = server.status()["plugins"][0]["generation"]
            .as_u64()
            .unwrap();
        let reply = control.call("probe/listen", json!({})).await;
        let port = reply["result"].as_u64().unwrap();
        let addr = format!("127.0.0.1:{port}");
        assert!(
            std::net::TcpStream::connect(&addr).is_ok(),
            "the plugin's listener is not up"
        );
        swap(&server, &mut control, PROBE, &v2).await;
        let retired = wait_state(&server, v1_generation, &["unmapped", "retired_mapped"]);
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "the retired generation still listens on {addr}: {retired}"
        );
        assert_status_truthful(&server);
        // `thread::spawn` in the action registered a thread-local
        // destructor on the server thread that ran it, which pins the
        // image; glibc lets it go only at a later dlclose. Once that
        // thread exits (idle blocking threads go after 10 s), the server's
        // recheck must see it unmapped without any further reload.
        let pinned = retired["state"] == "retired_mapped";
        let unmapped = wait_state(&server, v1_generation, &["unmapped"]);
        assert!(
            !really_mapped(&server, unmapped["image"].as_str().unwrap()),
            "{unmapped}"
        );
        eprintln!("RUST_BACKTRACE={backtrace:?}: pinned at first: {pinned}; unmapped later");
    }
}

/// Calls every kind of action in turn (a string result, an error, a slow
/// call, deferred replies to an ordinary call and to an inline one, a log
/// line) until `stop`; every reply must be the expected result or error.
/// Returns the number of calls.
async fn every_kind_worker(mut client: Client, stop: Arc<AtomicBool>) -> usize {
    let kinds = [
        ("probe/version", json!({})),
        ("probe/fail", json!({})),
        ("probe/sleep", json!({"ms": 30})),
        ("probe/later", json!({})),
        ("probe/later-inline", json!({})),
        ("probe/log", json!({})),
        ("probe/build", json!({})),
    ];
    let mut calls = 0;
    while !stop.load(Ordering::Relaxed) {
        let (method, params) = &kinds[calls % kinds.len()];
        calls += 1;
        let id = calls as u64;
        client.request(id, method, params.clone()).await;
        let (reply, _) = client.recv_until(|m| m["id"] == id).await;
        if *method == "probe/fail" {
            let message = reply["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{method}: {reply}");
        } else {
            assert!(reply.get("result").is_some(), "{method}: {reply}");
        }
    }
    calls
}

/// The hex ranges `0x..-0x..` named in a reason.
fn ranges_in(reason: &str) -> Vec<(usize, usize)> {
    reason
        .split_whitespace()
        .filter_map(|word| {
            let (start, end) = word.split_once('-')?;
            let hex = |s: &str| usize::from_str_radix(s.strip_prefix("0x")?, 16).ok();
            Some((hex(start)?, hex(end)?))
        })
        .collect()
}

/// Whether the server's real maps hold `range` with no access.
fn reserved_no_access(server: &Server, (start, end): (usize, usize)) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    maps.lines().any(|line| {
        let mut fields = line.split(' ');
        let (span, perms) = (fields.next().unwrap(), fields.next().unwrap());
        let (from, to) = span.split_once('-').unwrap();
        let (from, to) = (
            usize::from_str_radix(from, 16).unwrap(),
            usize::from_str_radix(to, 16).unwrap(),
        );
        perms == "---p" && from <= start && end <= to
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_retired_images_protected_two_hundred_swaps_over_every_kind_of_action_never_fault() {
    let (v1, v2) = (variant("v1"), variant("v2"));
    for backtrace in BACKTRACE_MODES {
        let server = start(
            backtrace,
            &[(PROBE, &v1)],
            &["--reload-protect-retired", "true"],
        );
        let mut control = control(&server).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for n in 0..8 {
            let client = server.connect_as(&format!("kinds-{n}")).await;
            workers.push(tokio::spawn(every_kind_worker(client, Arc::clone(&stop))));
        }
        for n in 1..=200u64 {
            let from = if n % 2 == 1 { &v2 } else { &v1 };
            swap(&server, &mut control, PROBE, from).await;
            // State handoff on every swap: the count goes on.
            let count = control.call("probe/count", json!({})).await;
            assert_eq!(count["result"]["count"], n, "after swap {n}: {count}");
        }
        stop.store(true, Ordering::Relaxed);
        let mut calls = 0;
        for worker in workers {
            calls += worker.await.unwrap();
        }
        assert!(
            calls > 1000,
            "only {calls} calls: too thin to prove anything"
        );
        // Every drained generation ends unmapped with its range reserved
        // (`/status` remembers the latest 64 unmapped ones).
        let start = Instant::now();
        loop {
            let all = generations(&server);
            let settled = all
                .iter()
                .all(|g| g["state"] == "serving" || g["state"] == "unmapped");
            let reserved = all
                .iter()
                .filter(|g| {
                    g["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("stay reserved"))
                })
                .count();
            if settled && reserved >= 60 {
                break;
            }
            assert!(start.elapsed() < WAIT, "{all:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        for g in generations(&server) {
            let Some(reason) = g["reason"].as_str() else {
                continue;
            };
            if g["state"] == "unmapped" {
                let ranges = ranges_in(reason);
                assert!(!ranges.is_empty(), "{g}");
                for range in ranges {
                    assert!(
                        reserved_no_access(&server, range),
                        "{range:x?} not reserved: {g}"
                    );
                }
            }
        }
        assert_status_truthful(&server);
        let alive = control.call("probe/version", json!({})).await;
        assert!(alive.get("result").is_some(), "{alive}");
        eprintln!("RUST_BACKTRACE={backtrace:?}: {calls} calls of every kind, 200 swaps, no fault");
    }
}
