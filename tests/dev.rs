//! `switchboard dev`, black-box: the real binary watching a real plugin
//! crate's sources, real `cargo build`s, real sockets. The crate is written
//! into a temporary folder (depending on this workspace's `action-api` by
//! path) and edited the way an editor saves it.
//!
//! Its target folder is `target/dev-test`, kept between runs so that only
//! the little crate itself is compiled after the first run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use switchboard_tests::{Client, SECRET, binary, workspace_root};
use tokio_tungstenite::tungstenite::Message;

/// The first build compiles the plugin's dependencies too (on a cold
/// target folder, serde and friends).
const FIRST_BUILD: Duration = Duration::from_secs(600);
/// A rebuild of the little crate, with the machine possibly busy.
const REBUILD: Duration = Duration::from_secs(180);

/// The plugin's file name in the actions folder.
const LIBRARY: &str = "libdevprobe.so";

fn manifest() -> String {
    let api = workspace_root().join("action-api");
    format!(
        r#"[package]
name = "devprobe"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
action-api = {{ path = {api:?} }}

# Its own workspace, wherever the folder is.
[workspace]
"#
    )
}

/// The plugin's source: `devprobe/version` answers `reply`. `body`
/// replaces the function body when given (to break the build).
fn source(reply: &str, body: Option<&str>) -> String {
    let body = body.map_or_else(|| format!("Ok({reply:?}.to_owned())"), str::to_owned);
    format!(
        r#"use action_api::{{Action, ActionError, Context, Plugin, Value, export_plugin}};

fn version(_ctx: &Context<'_>, _params: Value) -> Result<String, ActionError> {{
    {body}
}}

fn plugin() -> Plugin {{
    Plugin::new("devprobe", "0.1.0").action(Action::new("devprobe/version", version).public())
}}

export_plugin!(plugin);
"#
    )
}

/// Saves `text` as `path` the way many editors do: written beside it,
/// then renamed over it.
fn save(path: &Path, text: &str) {
    let staged = path.with_extension("rs.tmp-save");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// A running `switchboard dev`, killed when dropped.
struct Dev {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Dev {
    fn start(src: &Path, actions: &Path, shadow: &Path, target: &Path) -> Dev {
        let mut child = Command::new(binary())
            .arg("dev")
            .arg("--src")
            .arg(src)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--jwt-secret")
            .arg(SECRET)
            .arg("--actions")
            .arg(actions)
            .arg("--shadow-dir")
            .arg(shadow)
            .env("CARGO_TARGET_DIR", target)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_CONFIG")
            .env_remove("SWITCHBOARD_ACTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("switchboard dev starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let stream = child.stderr.take().unwrap();
            let log = Arc::clone(&stderr);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send(addr.to_owned());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let Ok(addr) = rx.recv_timeout(FIRST_BUILD) else {
            let _ = child.kill();
            panic!(
                "switchboard dev did not start; its log:\n{}",
                stderr.lock().unwrap()
            );
        };
        Dev {
            child,
            addr,
            stderr,
        }
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` at least `count` times.
    fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let start = Instant::now();
        while self.log().matches(needle).count() < count {
            assert!(
                start.elapsed() < within,
                "the log never held {needle:?} {count} times; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn connect(&self, user: &str) -> Client {
        let token = switchboard_tests::token(user, 3600);
        Client::connect(&format!("ws://{}/ws?token={token}", self.addr)).await
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to `within`) for the `actions.changed` push that says a new
/// generation of the plugin serves.
async fn wait_changed(control: &mut Client, dev: &Dev, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(message) = control.next_message(left).await else {
            panic!(
                "no actions.changed push for {LIBRARY} in {within:?}; log:\n{}",
                dev.log()
            );
        };
        let Message::Text(text) = message else {
            continue;
        };
        let push: Value = serde_json::from_str(&text).unwrap();
        if push["method"] == "rpc.event"
            && push["params"]["event"] == "actions.changed"
            && push["params"]["data"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(LIBRARY))
        {
            return push["params"]["data"].clone();
        }
    }
}

/// `devprobe/version`'s answer.
async fn version(client: &mut Client) -> Value {
    let reply = client.call("devprobe/version", json!({})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    reply["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_rebuilds_on_save_keeps_serving_through_errors_and_hot_reloads() {
    let krate = tempfile::tempdir().unwrap();
    std::fs::create_dir(krate.path().join("src")).unwrap();
    std::fs::write(krate.path().join("Cargo.toml"), manifest()).unwrap();
    // The workspace's lock file: the same dependency versions, no index.
    std::fs::copy(
        workspace_root().join("Cargo.lock"),
        krate.path().join("Cargo.lock"),
    )
    .unwrap();
    let lib_rs = krate.path().join("src/lib.rs");
    std::fs::write(&lib_rs, source("v1", None)).unwrap();
    let actions = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let target: PathBuf = workspace_root().join("target").join("dev-test");

    let dev = Dev::start(krate.path(), actions.path(), shadow.path(), &target);
    dev.wait_for_log("built devprobe in", 1, REBUILD);
    assert!(actions.path().join(LIBRARY).is_file(), "{}", dev.log());

    let mut control = dev.connect("control").await;
    let reply = control
        .call("rpc.subscribe", json!({"event": "actions.changed"}))
        .await;
    assert_eq!(reply["result"]["subscribed"], true, "{reply}");
    let mut caller = dev.connect("caller").await;
    assert_eq!(version(&mut caller).await, "v1");

    // A save: rebuilt, installed, hot-reloaded.
    let saved = Instant::now();
    save(&lib_rs, &source("v2", None));
    let change = wait_changed(&mut control, &dev, REBUILD).await;
    assert_eq!(version(&mut caller).await, "v2", "{change}");
    let first = saved.elapsed();
    assert_eq!(change["plugin"], "devprobe", "{change}");
    dev.wait_for_log("built devprobe in", 2, REBUILD);

    // A compiler error: shown clearly, nothing installed, the old build
    // keeps serving.
    let installed = std::fs::read(actions.path().join(LIBRARY)).unwrap();
    save(
        &lib_rs,
        &source("v-broken", Some("Ok(42_u32) // not a String")),
    );
    dev.wait_for_log(
        "build of devprobe failed (exit status: 101); still serving the previous version",
        1,
        REBUILD,
    );
    dev.wait_for_log("end of cargo's output for devprobe", 1, REBUILD);
    let log = dev.log();
    let banner = log.find("==== build of devprobe failed").unwrap();
    let errors = &log[banner..];
    assert!(errors.contains("error[E0308]: mismatched types"), "{log}");
    assert!(errors.contains("src/lib.rs:4"), "{log}");
    assert_eq!(version(&mut caller).await, "v2");
    assert_eq!(
        std::fs::read(actions.path().join(LIBRARY)).unwrap(),
        installed,
        "a failed build must install nothing"
    );
    assert_eq!(dev.log().matches("built devprobe in").count(), 2);

    // Fixed: the new code serves.
    let saved = Instant::now();
    save(&lib_rs, &source("v3", None));
    let change = wait_changed(&mut control, &dev, REBUILD).await;
    assert_eq!(version(&mut caller).await, "v3", "{change}");
    let fixed = saved.elapsed();

    // Only the served file in the folder: no staged copies left behind.
    let names: Vec<String> = std::fs::read_dir(actions.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec![LIBRARY.to_owned()]);

    eprintln!(
        "switchboard dev save-to-first-reply (debug build of switchboard, cargo build of the plugin in the dev profile): \
         edit {} ms, fix after an error {} ms",
        first.as_millis(),
        fixed.as_millis()
    );
}

#[test]
fn dev_help_says_where_builds_go() {
    let out = Command::new(binary())
        .args(["dev", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("target/switchboard-dev/actions"), "{help}");
    assert!(help.contains("--src <DIR>"), "{help}");
    assert!(help.contains("--release"), "{help}");
}

/// A port in use is said at once: `dev` takes its port before building
/// anything (a build takes seconds; the port error used to come after it).
#[test]
fn dev_takes_its_port_before_building() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let krate = tempfile::tempdir().unwrap();
    std::fs::create_dir(krate.path().join("src")).unwrap();
    std::fs::write(krate.path().join("Cargo.toml"), manifest()).unwrap();
    std::fs::write(krate.path().join("src/lib.rs"), source("v1", None)).unwrap();
    let actions = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .arg("dev")
        .arg("--src")
        .arg(krate.path())
        .arg("--actions")
        .arg(actions.path())
        .arg("--listen")
        .arg(&port)
        .env("CARGO_TARGET_DIR", target.path())
        .env("XDG_STATE_HOME", target.path())
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("error: could not listen on {port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "it built first: {stderr}");
    assert!(
        !target.path().join("debug").exists(),
        "cargo ran in {}",
        target.path().display()
    );
    assert_eq!(std::fs::read_dir(actions.path()).unwrap().count(), 0);
}

#[test]
fn dev_refuses_a_folder_that_is_not_a_crate() {
    let empty = tempfile::tempdir().unwrap();
    let actions = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .arg("dev")
        .arg("--src")
        .arg(empty.path())
        .arg("--actions")
        .arg(actions.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("has no Cargo.toml: --src takes a plugin crate's folder"),
        "{stderr}"
    );
}
