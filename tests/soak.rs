//! The soak (issue #20, part 3): `switchboard bench soak` for 60 s
//! against the real binary serving the echo and chat plugins cargo
//! built, with the echo plugin hot-reloaded every few seconds while it is
//! called. Passes when every check of the soak does: no crash, nothing
//! acknowledged lost, every recovery exact or `recovered: false`, every
//! call answered right, every refusal with a protocol code, hostile
//! clients dealt with, every reload taken, RSS flat after warm-up. No
//! check is on timing; the figures are printed for the log.
//!
//! The RSS bound is 16 MiB per minute here (the command's default, for
//! its 10-minute runs, is 4 MiB or 1% of the RSS): 60 s of a debug build
//! is still warming up in its second half (measured on 2 cores: +3.6 and
//! +4.2 MiB/min over the second half of 60 s, +1.2 MiB/min over that of
//! 150 s, then flat at about 70 MiB), and a faster machine does more in
//! the same minute. It still catches a leak per delivery or per
//! reconnect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::process::Command;
use switchboard_tests::{SECRET, ServerConfig, binary};

/// How long the load runs (the command then drains and checks).
const DURATION: &str = "60s";

#[test]
fn a_60_second_soak_loses_nothing_and_stays_flat() {
    let server = ServerConfig::default().plugins(&["echo", "chat"]).start();
    let echo = server.action_file("libecho.so");
    let out = Command::new(binary())
        .args(["bench", "--url", &server.ws_url(), "--json"])
        .args(["--pid", &server.pid().to_string()])
        .args(["soak", "--duration", DURATION, "--rss-slope-mib", "16"])
        .args(["--reload-target", echo.to_str().unwrap()])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {stdout}\n{stderr}"));
    for check in report["checks"].as_array().unwrap() {
        let mark = if check["passed"] == true {
            "PASS"
        } else {
            "FAIL"
        };
        eprintln!("{mark} {}: {}", check["name"], check["figures"]);
    }
    eprintln!(
        "connections {}, calls/s {:.0}, publishes {} (acknowledged {}), deliveries {}, reloads {}, reconnects {}, refusals {}, closes {}",
        report["connections"],
        report["calls_per_s"].as_f64().unwrap_or(0.0),
        report["publishes"],
        report["acked"],
        report["deliveries"],
        report["reloads"]["done"],
        report["reconnects"],
        report["refusals"],
        report["closes"]
    );
    assert!(
        out.status.success(),
        "a check of the soak failed: {report:#}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.len() >= 8, "{report:#}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{report:#}");
    assert!(report["reconnects"].as_u64().unwrap() > 0, "{report:#}");
    assert!(
        report["reloads"]["done"].as_u64().unwrap() > 0,
        "{report:#}"
    );
}
