//! Loading a folder of plugins: what loads, what is skipped or refused and
//! with which message, `/status`, `/healthz`, and a plugin built for the
//! first revision of the ABI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_tests::{ServerConfig, error_code, plugin, wait_until};

/// The machine-readable kind `/status` gives a refused file.
fn refused_kind(status: &Value, file_name: &str) -> String {
    status["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with(file_name))
        .and_then(|r| r["kind"].as_str())
        .unwrap_or_else(|| panic!("{file_name} has no refusal kind in {status}"))
        .to_owned()
}

fn refused_reason(status: &Value, file_name: &str) -> String {
    status["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file"].as_str().unwrap().ends_with(file_name))
        .and_then(|r| r["reason"].as_str())
        .unwrap_or_else(|| panic!("{file_name} not refused in {status}"))
        .to_owned()
}

/// `serve` in the repository's root uses `actions/`, which holds source
/// crates: the server says so, and what to do, instead of serving nothing
/// in silence.
#[test]
fn a_folder_of_plugin_sources_or_of_nothing_gets_a_hint() {
    let sources = tempfile::tempdir().unwrap();
    std::fs::create_dir(sources.path().join("greeter")).unwrap();
    std::fs::write(
        sources.path().join("greeter").join("Cargo.toml"),
        "[package]\nname = \"greeter\"\n",
    )
    .unwrap();
    let server = ServerConfig::default()
        .plugins(&[])
        .actions_folder(sources.path())
        .start();
    let log = server.log();
    let hint = log
        .lines()
        .find(|l| l.contains("holds plugin source crates"))
        .unwrap_or_else(|| panic!("no hint in {log}"));
    assert!(hint.contains("WARN") && hint.contains("greeter"), "{hint}");
    assert!(hint.contains("switchboard dev"), "{hint}");

    let empty = tempfile::tempdir().unwrap();
    let server = ServerConfig::default()
        .plugins(&[])
        .actions_folder(empty.path())
        .start();
    assert!(
        server.log().contains("no plugins in the actions folder"),
        "{}",
        server.log()
    );
    // A folder that loads something gets neither.
    let server = ServerConfig::default().plugins(&["echo"]).start();
    assert!(!server.log().contains("no plugins in the actions folder"));
    assert!(!server.log().contains("holds plugin source crates"));
}

#[tokio::test]
async fn non_plugins_are_skipped_or_refused_and_the_rest_loads() {
    let not_a_plugin = std::fs::read(plugin("not_a_plugin")).unwrap();
    let echo = std::fs::read(plugin("echo")).unwrap();
    let server = ServerConfig::default()
        .plugins(&["echo", "kv"])
        .file("README.txt", b"notes, not a plugin")
        .file("garbage.so", b"this is not an ELF file")
        .file("truncated.so", &echo[..echo.len() / 3])
        .file("libnot_a_plugin.so", &not_a_plugin)
        .start();
    let log = server.log();
    let skipped = log
        .lines()
        .find(|l| l.contains("README.txt"))
        .expect("README.txt is mentioned");
    assert!(
        skipped.contains("WARN") && skipped.contains("skipped: not a .so file"),
        "{skipped}"
    );

    let status = server.status();
    assert!(refused_reason(&status, "garbage.so").contains("not a loadable library"));
    assert!(refused_reason(&status, "truncated.so").contains("not a loadable library"));
    assert!(
        refused_reason(&status, "libnot_a_plugin.so")
            .contains("exports no `switchboard_plugin_v1` symbol")
    );
    // Each refusal also says its kind, for programs.
    assert_eq!(refused_kind(&status, "garbage.so"), "not_a_library");
    assert_eq!(refused_kind(&status, "truncated.so"), "not_a_library");
    assert_eq!(refused_kind(&status, "libnot_a_plugin.so"), "not_a_plugin");
    for name in ["garbage.so", "truncated.so", "libnot_a_plugin.so"] {
        let line = log
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} not in log:\n{log}"));
        assert!(line.contains("plugin refused"), "{line}");
    }
    let names: Vec<&str> = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "kv"]);
    let mut c = server.connect_as("alice").await;
    assert_eq!(c.call("echo", json!(["ok"])).await["result"], json!(["ok"]));
    assert_eq!(
        c.call("kv/incr", json!({"key": "k"})).await["result"],
        json!({"value": 1})
    );
}

#[tokio::test]
async fn an_abi_mismatch_is_refused_naming_both_versions() {
    let server = ServerConfig::default()
        .plugins(&["echo", "future_abi"])
        .start();
    let status = server.status();
    let reason = refused_reason(&status, "libfuture_abi.so");
    assert_eq!(refused_kind(&status, "libfuture_abi.so"), "abi_mismatch");
    assert!(
        reason.contains("ABI version 2") && reason.contains("speaks version 1"),
        "{reason}"
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("libfuture_abi.so"))
        .unwrap()
        .to_owned();
    assert!(line.contains("ABI version 2"), "{line}");
    let mut c = server.connect().await;
    assert_eq!(c.call("echo", json!([1])).await["result"], json!([1]));
}

#[tokio::test]
async fn two_plugins_claiming_one_path_refuse_the_second_whole() {
    let server = ServerConfig::default()
        .plugins(&["echo", "path_thief", "kv"])
        .start();
    let status = server.status();
    let reason = refused_reason(&status, "libpath_thief.so");
    assert_eq!(refused_kind(&status, "libpath_thief.so"), "path_conflict");
    for part in ["path-thief 0.9.0", "'echo'", "echo 0.1.0", "libecho.so"] {
        assert!(reason.contains(part), "{part:?} missing from {reason:?}");
    }
    let mut c = server.connect().await;
    // The first plugin keeps its path; none of the refused plugin's actions exist.
    assert_eq!(
        c.call("echo", json!(["mine"])).await["result"],
        json!(["mine"])
    );
    assert_eq!(
        error_code(&c.call("thief/steal", Value::Null).await),
        Some(-32601)
    );
    // Plugins after the refused one still load.
    let names: Vec<&str> = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["echo", "kv"]);
}

#[tokio::test]
async fn a_refused_file_that_does_not_change_is_not_tried_again() {
    let server = ServerConfig::default()
        .plugins(&["echo", "path_thief"])
        .start();
    // A later change the watch sees: once it is served, the watch has
    // long looked at the refused file again (it looks at every file once
    // when it starts), and had a reading of that file counted as a change,
    // the refusal would have been logged again by now.
    server.install("libkv.so", &plugin("kv"));
    wait_until("kv is served", || {
        server.status()["plugins"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "kv"))
    });
    let refusals = server
        .log()
        .lines()
        .filter(|l| l.contains("plugin refused") && l.contains("path-thief"))
        .count();
    assert_eq!(refusals, 1, "{}", server.log());
    assert_eq!(
        refused_kind(&server.status(), "libpath_thief.so"),
        "path_conflict"
    );
}

#[tokio::test]
async fn a_plugin_built_for_the_first_abi_revision_still_loads() {
    let server = ServerConfig::default()
        .plugins(&["legacy_layout", "echo"])
        .start();
    let status = server.status();
    assert_eq!(status["refused"], json!([]), "{status}");
    let mut c = server.connect().await;
    assert_eq!(
        c.call("legacy/hello", Value::Null).await["result"],
        "hello from a first-revision plugin"
    );
    // Shutdown must not call the hook the old layout does not have.
    drop(c);
    let mut server = server;
    server.signal_term();
    assert!(server.wait_exit().success(), "{}", server.log());
}

#[tokio::test]
async fn status_and_healthz_describe_the_server() {
    let server = ServerConfig::default().start();
    let (code, body) = server.http_get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let _c1 = server.connect().await;
    let _c2 = server.connect().await;
    let status = server.status();
    assert_eq!(status["server"], "switchboard");
    assert_eq!(status["connections"], 2);
    assert!(status["uptime_secs"].is_u64());
    let echo = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["version"], "0.1.0");
    assert!(echo["file"].as_str().unwrap().ends_with("libecho.so"));
    let sleep = echo["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == "echo/sleep")
        .unwrap()
        .clone();
    assert_eq!(
        sleep,
        json!({"path": "echo/sleep", "public": false, "timeout_ms": 2000})
    );
    let (code, _) = server.http_get("/nope");
    assert_eq!(code, 404);
    let (code, body) = server.http_get("/ws");
    assert_eq!(code, 426, "{body}");
}

#[tokio::test]
async fn plugin_logs_reach_the_server_log_with_the_plugin_name() {
    let server = ServerConfig::default().plugins(&["hello_action"]).start();
    let mut c = server.connect().await;
    assert_eq!(
        c.call("hello/greet", json!({"name": "Ada"})).await["result"],
        "Hello, Ada!"
    );
    server.wait_for_log("greeting Ada");
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("greeting Ada"))
        .unwrap()
        .to_owned();
    assert!(
        line.contains("plugin=\"hello\"") || line.contains("plugin=hello"),
        "{line}"
    );
    assert!(line.contains("conn="), "{line}");
}

#[tokio::test]
async fn plugin_copies_are_private_and_removed_at_exit() {
    let mut server = ServerConfig::default().plugins(&["echo"]).start();
    let status = server.status();
    let file = status["plugins"][0]["file"].as_str().unwrap().to_owned();
    assert!(file.starts_with(server.actions_dir.path().to_str().unwrap()));
    // Overwriting the file in the actions folder in place does not touch
    // the mapped copy: the server keeps serving.
    std::fs::write(&file, b"overwritten").unwrap();
    let mut c = server.connect().await;
    assert_eq!(
        c.call("echo", json!(["alive"])).await["result"],
        json!(["alive"])
    );
    drop(c);
    server.signal_term();
    assert!(server.wait_exit().success());
}
