//! Memory across the plugin boundary, black-box: every buffer that crosses
//! it is freed by the generation that made it.
//!
//! `tests/plugins/reload-probe` counts its own heap with a counting global
//! allocator: `probe/live` answers what is live, and its shutdown hook logs
//! what is left when its generation retires. A plugin links its own
//! allocator, so a result, an error or a log line the plugin allocated and
//! the host kept (or freed) would stay counted as live for ever; a host
//! buffer the plugin freed would show as one missing. The real server,
//! plugin builds cargo made, real sockets; every wait has a deadline.
//!
//! Each test runs with `RUST_BACKTRACE` unset and set to 1, like
//! `tests/reload.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchboard_tests::{Client, Server, ServerConfig, WAIT, control, probe_variant, wait_changed};

/// The probe's file name in the actions folder.
const PROBE: &str = "libprobe.so";

/// Both settings of `RUST_BACKTRACE` every test runs under.
const BACKTRACE_MODES: [Option<&str>; 2] = [None, Some("1")];

/// Every kind of call the load makes: results, an error, deferred replies
/// from a thread of the plugin's (to an ordinary call and to an inline
/// one), state, a log line, a blocking call.
const KINDS: [&str; 8] = [
    "probe/version",
    "probe/build",
    "probe/fail",
    "probe/later",
    "probe/later-inline",
    "probe/count",
    "probe/log",
    "probe/sleep",
];

/// Connections calling at once, calls each, and calls each keeps in flight.
const CONNECTIONS: usize = 8;
const CALLS_PER_CONNECTION: usize = 250;
const WINDOW: usize = 16;

/// A build of the probe reporting `version`, under a name of this file's own.
fn variant(version: &str) -> PathBuf {
    probe_variant(&format!("memory-{version}"), &[("PROBE_VERSION", version)])
}

fn start(backtrace: Option<&str>, probe: &Path) -> Server {
    ServerConfig::default()
        .plugins(&[])
        .env("RUST_BACKTRACE", backtrace)
        .arg("--reload-debounce-ms")
        .arg("40")
        .plugin_file(PROBE, probe)
        .start()
}

/// Installs `from` as the probe and waits for the `actions.changed` push
/// that says a new generation of it serves; returns that generation.
async fn swap(server: &Server, control: &mut Client, from: &Path) -> u64 {
    server.install(PROBE, from);
    wait_changed(control, PROBE).await["generation"]
        .as_u64()
        .unwrap()
}

fn serving_generation(server: &Server) -> u64 {
    server.status()["plugins"][0]["generation"]
        .as_u64()
        .unwrap()
}

/// Waits until no call is running on the server. A reply reaches the
/// client as soon as the plugin completes it, a moment before the
/// plugin's `call` returns and frees what it used to make the reply; the
/// server counts the call as running until then.
fn wait_idle(server: &Server) {
    let start = Instant::now();
    loop {
        let status = server.status();
        if status["inflight_calls"] == 0 {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "calls never finished: {}",
            status["inflight_calls"]
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `probe/live` once no call runs: (live allocations, live bytes).
async fn live(server: &Server, client: &mut Client) -> (i64, i64) {
    wait_idle(server);
    let reply = client.call("probe/live", json!({})).await;
    let result = &reply["result"];
    (
        result["allocations"]
            .as_i64()
            .unwrap_or_else(|| panic!("{reply}")),
        result["bytes"]
            .as_i64()
            .unwrap_or_else(|| panic!("{reply}")),
    )
}

fn params(kind: &str) -> Value {
    match kind {
        "probe/sleep" => json!({"ms": 2}),
        _ => json!({}),
    }
}

/// Checks that `reply` is what `kind` answers on a build of `version`;
/// returns the count `probe/count` answered.
fn check(kind: &str, reply: &Value, version: &str) -> Option<u64> {
    let result = &reply["result"];
    match kind {
        "probe/version" | "probe/sleep" => {
            assert_eq!(result["version"], version, "{kind}: {reply}");
            assert_eq!(result["self_version"], version, "{kind}: {reply}");
        }
        "probe/build" | "probe/log" => assert_eq!(*result, json!(version), "{kind}: {reply}"),
        "probe/fail" => {
            assert_eq!(reply["error"]["code"], 4100, "{kind}: {reply}");
            let message = reply["error"]["message"].as_str().unwrap_or("");
            assert_eq!(
                message,
                format!("probe/fail always fails (this is {version})"),
                "{reply}"
            );
        }
        "probe/later" | "probe/later-inline" => {
            assert_eq!(*result, json!(format!("later from {version}")), "{reply}")
        }
        "probe/count" => {
            assert_eq!(result["version"], version, "{kind}: {reply}");
            return Some(
                result["count"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{reply}")),
            );
        }
        _ => unreachable!("{kind}"),
    }
    None
}

/// Makes `CALLS_PER_CONNECTION` calls on `client`, kinds in turn starting
/// at `first`, `WINDOW` in flight; checks every reply and returns the
/// counts `probe/count` answered.
async fn load(mut client: Client, first: usize, version: String) -> Vec<u64> {
    let mut sent = 0;
    let mut answered = 0;
    let mut replied = [false; CALLS_PER_CONNECTION];
    let mut counts = Vec::new();
    while answered < CALLS_PER_CONNECTION {
        while sent < CALLS_PER_CONNECTION && sent - answered < WINDOW {
            let kind = KINDS[(first + sent) % KINDS.len()];
            client.request(sent, kind, params(kind)).await;
            sent += 1;
        }
        let reply = client.recv().await;
        let id = reply["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("not a reply: {reply}")) as usize;
        assert!(id < sent, "a reply to a call never made: {reply}");
        assert!(!replied[id], "a second reply to one call: {reply}");
        replied[id] = true;
        let kind = KINDS[(first + id) % KINDS.len()];
        counts.extend(check(kind, &reply, &version));
        answered += 1;
    }
    client.close().await;
    counts
}

/// What generation `number`'s shutdown hook logged, once it has: the live
/// `(allocations, bytes)` read as `probe/live` reads, then once the
/// plugin's threads had stopped.
fn shutdown_line(server: &Server, number: u64) -> [(i64, i64); 2] {
    const NEEDLE: &str = "live allocations at shutdown: ";
    let tag = format!("generation={number}");
    let start = Instant::now();
    loop {
        let log = server.log();
        let found = log.lines().find_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if !words.contains(&tag.as_str()) {
                return None;
            }
            let rest = line.split(NEEDLE).nth(1)?;
            let numbers: Vec<i64> = rest
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .filter_map(|w| w.parse().ok())
                .take(4)
                .collect();
            match numbers[..] {
                [n, b, m, c] => Some([(n, b), (m, c)]),
                _ => panic!("cannot read {line:?}"),
            }
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            start.elapsed() < WAIT,
            "generation {number} never logged {NEEDLE:?}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_buffer_that_crosses_the_boundary_is_freed_by_the_generation_that_made_it() {
    let (v1, v2) = (variant("v1"), variant("v2"));
    for backtrace in BACKTRACE_MODES {
        let started = Instant::now();
        let server = start(backtrace, &v1);
        let mut control = control(&server).await;
        let first = serving_generation(&server);

        // Warm up: each kind once, so what a first call allocates for good
        // (a lazily made static) is in the baseline.
        let mut counted = BTreeSet::new();
        for kind in KINDS {
            let reply = control.call(kind, params(kind)).await;
            counted.extend(check(kind, &reply, "v1"));
        }
        let warm = live(&server, &mut control).await;
        let baseline = live(&server, &mut control).await;
        assert_eq!(
            warm, baseline,
            "two readings with nothing in between differ"
        );
        assert!(baseline.0 > 0, "the counting allocator counts nothing");

        // Many calls of every kind from several connections at once.
        let mut tasks = Vec::new();
        for n in 0..CONNECTIONS {
            let client = server.connect_as(&format!("load-{n}")).await;
            tasks.push(tokio::spawn(load(client, n, "v1".to_owned())));
        }
        for task in tasks {
            for count in task.await.unwrap() {
                assert!(counted.insert(count), "count {count} answered twice");
            }
        }
        let total = CONNECTIONS * CALLS_PER_CONNECTION;
        // Every count from 1 on was answered once: no call was lost.
        assert_eq!(
            counted.iter().copied().collect::<Vec<_>>(),
            (1..=counted.len() as u64).collect::<Vec<_>>()
        );
        // Every log line the calls wrote arrived (the warm-up's too).
        let log_calls = 1
            + (0..CONNECTIONS)
                .flat_map(|n| {
                    (0..CALLS_PER_CONNECTION).map(move |id| KINDS[(n + id) % KINDS.len()])
                })
                .filter(|kind| *kind == "probe/log")
                .count();
        let logged = || server.log().matches("probe says hello from v1").count();
        let waiting = Instant::now();
        while logged() < log_calls {
            assert!(
                waiting.elapsed() < WAIT,
                "{} of {log_calls} log lines arrived",
                logged()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(logged(), log_calls);
        let after = live(&server, &mut control).await;
        assert_eq!(
            after.0, baseline.0,
            "{total} calls changed the plugin's live allocations from {baseline:?} to {after:?} (allocations, bytes)"
        );
        assert_eq!(
            after.1, baseline.1,
            "{total} calls changed the plugin's live bytes from {baseline:?} to {after:?} (allocations, bytes)"
        );

        // Retire generation 1: its shutdown hook finds what `probe/live`
        // found after the warm-up (its statics and its idle thread), so
        // nothing the calls, the swap or the state handoff made was kept.
        let second = swap(&server, &mut control, &v2).await;
        assert_ne!(second, first);
        let reply = control.call("probe/build", json!({})).await;
        assert_eq!(reply["result"], "v2", "{reply}");
        let [at_shutdown, stopped] = shutdown_line(&server, first);
        assert_eq!(
            at_shutdown, baseline,
            "generation {first} retired with (allocations, bytes) {at_shutdown:?}, its baseline was {baseline:?}"
        );
        // Stopping its thread freed what that thread held, and no more
        // than was live.
        assert!(
            0 < stopped.0 && stopped.0 < at_shutdown.0 && stopped.1 < at_shutdown.1,
            "with its threads stopped, generation {first} had {stopped:?} live, before {at_shutdown:?}"
        );
        // Closed by now (the hook runs just before `dlclose`); what became
        // of its image is reported, `tests/reload.rs` judges it.
        let settled = Instant::now();
        let retired = loop {
            let g = server.status()["generations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["generation"] == first)
                .cloned()
                .unwrap();
            if g["state"] == "unmapped" || g["state"] == "retired_mapped" {
                break g;
            }
            assert!(settled.elapsed() < WAIT, "never closed: {g}");
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!(
            "RUST_BACKTRACE={backtrace:?}: live (allocations, bytes) after warm-up {baseline:?}, after {total} calls {after:?}, \
             at retirement {at_shutdown:?}, {stopped:?} once its threads stopped; {} counts, {log_calls} log lines; generation {first} is {}; {:?}",
            counted.len(),
            retired["state"],
            started.elapsed()
        );
    }
}
