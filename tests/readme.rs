//! The README's "Write an action" walkthrough, as a newcomer follows it:
//! its own plugin crate (the README's code, read from the README itself)
//! built by cargo, dropped into a running server, answering, then edited,
//! rebuilt and hot-reloaded under a connection that stays open.
//!
//! The crate's target folder is `target/dev-test` (shared with
//! `tests/dev.rs`), kept between runs, so only the little crate itself is
//! compiled after the first run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::path::Path;
use std::process::Command;
use switchboard_tests::{ServerConfig, control, wait_changed, workspace_root};

/// The README's `src/lib.rs` for the walkthrough's plugin.
fn readme_plugin_source() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let after = readme
        .split_once("Replace `src/lib.rs` with:")
        .expect("the README's walkthrough says which src/lib.rs to write")
        .1;
    let block = after
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a rust block follows")
        .0;
    block.to_owned()
}

/// What `cargo new --lib`, the README's two `cargo add`s and its `[lib]`
/// lines make of `Cargo.toml` (with a `[workspace]` of its own, wherever
/// the temporary folder is).
fn manifest() -> String {
    let api = workspace_root().join("action-api");
    format!(
        r#"[package]
name = "greeter"
version = "0.1.0"
edition = "2024"

[dependencies]
action-api = {{ path = {api:?} }}
serde = {{ version = "1", features = ["derive"] }}

[lib]
crate-type = ["cdylib"]

[workspace]
"#
    )
}

/// Builds the crate in `dir` and returns its library.
fn build(dir: &Path) -> std::path::PathBuf {
    let target = workspace_root().join("target").join("dev-test");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's plugin does not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join("debug").join("libgreeter.so")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_own_plugin_builds_answers_and_hot_reloads() {
    let source = readme_plugin_source();
    assert!(source.contains("\"greeter/hello\""), "{source}");
    let krate = tempfile::tempdir().unwrap();
    std::fs::create_dir(krate.path().join("src")).unwrap();
    std::fs::write(krate.path().join("Cargo.toml"), manifest()).unwrap();
    // The workspace's lock file: the same dependency versions, no index.
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        krate.path().join("Cargo.lock"),
    )
    .unwrap();
    std::fs::write(krate.path().join("src/lib.rs"), &source).unwrap();
    let library = build(krate.path());

    // The quickstart's server, with its plugins; the new one dropped in.
    let server = ServerConfig::default()
        .plugins(&["echo", "kv", "chat", "hello_action"])
        .start();
    let mut watch = control(&server).await;
    let mut caller = server.connect_as("ada").await;
    server.install("libgreeter.so", &library);
    let loaded = wait_changed(&mut watch, "libgreeter.so").await;
    assert_eq!(loaded["plugin"], "greeter", "{loaded}");
    let reply = caller.call("greeter/hello", json!({"name": "Ada"})).await;
    assert_eq!(reply["result"], "Hi, Ada!", "{reply}");
    assert!(server.log().contains("greeting Ada"), "{}", server.log());

    // Change the greeting, build and install again: the same connection's
    // next call gets the new text.
    std::fs::write(
        krate.path().join("src/lib.rs"),
        source.replace("\"Hi, {}!\"", "\"Welcome back, {}!\""),
    )
    .unwrap();
    let library = build(krate.path());
    server.install("libgreeter.so", &library);
    wait_changed(&mut watch, "libgreeter.so").await;
    let reply = caller.call("greeter/hello", json!({"name": "Ada"})).await;
    assert_eq!(reply["result"], "Welcome back, Ada!", "{reply}");
    // The example the quickstart loads answers beside it.
    let reply = caller.call("hello/greet", json!({"name": "Ada"})).await;
    assert_eq!(reply["result"], "Hello, Ada!", "{reply}");
}
