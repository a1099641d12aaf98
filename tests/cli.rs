//! The command line: `check`, `token`, `--help`, and refusals of bad
//! configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::process::Command;
use switchboard_tests::{Client, SECRET, ServerConfig, binary, plugin};

fn run(args: &[&str]) -> (bool, String, String) {
    // An empty state folder: no development secret from an earlier run.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(args)
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env("XDG_STATE_HOME", state.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_describes_a_plugin() {
    let (ok, stdout, _) = run(&["check", plugin("echo").to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("abi:     1"), "{stdout}");
    assert!(stdout.contains("plugin:  echo 0.1.0"), "{stdout}");
    assert!(
        stdout.contains("echo/sleep (signed-in, timeout 2000 ms)"),
        "{stdout}"
    );
    assert!(stdout.contains("echo/whoami (public, inline)"), "{stdout}");

    let (ok, stdout, _) = run(&["check", plugin("auth_probe").to_str().unwrap()]);
    assert!(ok);
    assert!(stdout.contains("hooks:   authenticate"), "{stdout}");
    assert!(
        stdout.contains("events:  connect, auth_success, auth_failure, disconnect, error"),
        "{stdout}"
    );
    assert!(
        stdout.contains("probe/scoped (scopes: probe:read)"),
        "{stdout}"
    );

    let (ok, stdout, _) = run(&["check", "--json", plugin("kv").to_str().unwrap()]);
    assert!(ok);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["name"], "kv");
    assert_eq!(report["abi_version"], 1);
    assert_eq!(report["actions"].as_array().unwrap().len(), 5);
}

#[test]
fn check_says_why_a_file_cannot_load() {
    let (ok, _, stderr) = run(&["check", plugin("future_abi").to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("built for plugin ABI version 2"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["check", plugin("not_a_plugin").to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("not a Switchboard plugin"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.so");
    std::fs::write(&junk, b"junk").unwrap();
    let missing = dir.path().join("libmissing.so");
    let (ok, stdout, _) = run(&["check", "--json", missing.to_str().unwrap()]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .starts_with("no such file"),
        "{report}"
    );
    let (ok, _, stderr) = run(&["check", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("it is a folder"), "{stderr}");
    let (ok, stdout, _) = run(&["check", "--json", junk.to_str().unwrap()]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("not a loadable library")
    );
}

#[tokio::test]
async fn token_mints_what_the_server_accepts() {
    let (ok, stdout, stderr) = run(&[
        "token",
        "--sub",
        "alice",
        "--ttl",
        "10m",
        "--jwt-secret",
        SECRET,
    ]);
    assert!(ok, "{stderr}");
    let token = stdout.trim();
    let server = ServerConfig::default().start();
    let mut c = Client::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "alice"
    );
    let reply = c.call("rpc.auth", json!({"token": token})).await;
    let expires_in = reply["result"]["expires_at"].as_i64().unwrap() - switchboard_tests::now();
    assert!((595..=601).contains(&expires_in), "{reply}");
}

#[test]
fn token_needs_a_secret_and_reads_the_environment_and_config() {
    let (ok, _, stderr) = run(&["token", "--sub", "alice"]);
    assert!(!ok);
    assert!(stderr.contains("no secret"), "{stderr}");
    let out = Command::new(binary())
        .args(["token", "--sub", "bob"])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, format!("jwt_secret = \"{SECRET}\"\n")).unwrap();
    let (ok, stdout, stderr) = run(&[
        "token",
        "--sub",
        "carol",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim().split('.').count(), 3);
}

#[tokio::test]
async fn serve_reads_a_config_file_the_environment_overrides_it_and_flags_override_both() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "max_batch = 1\ncall_timeout_ms = 1234\nmax_inflight_per_connection = 3\n",
    )
    .unwrap();
    let server = ServerConfig::default()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("SWITCHBOARD_MAX_BATCH", Some("5"))
        .env("SWITCHBOARD_MAX_INFLIGHT_PER_CONNECTION", Some("7"))
        .arg("--max-batch")
        .arg("2")
        .start();
    let mut c = server.connect().await;
    let ping = |id| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"rpc.ping"}}"#);
    c.send_text(&format!("[{},{}]", ping(1), ping(2))).await;
    assert_eq!(
        c.recv().await.as_array().map(Vec::len),
        Some(2),
        "the flag's limit of 2 applies"
    );
    c.send_text(&format!("[{},{},{}]", ping(1), ping(2), ping(3)))
        .await;
    assert_eq!(
        c.recv().await["error"]["code"],
        -32600,
        "a batch of 3 is over the flag's limit, not the environment's 5"
    );
    let bounds = &server.status()["bounds"];
    assert_eq!(
        bounds["inflight_calls"]["max_per_connection"], 7,
        "the environment's value replaces the file's"
    );
    assert_eq!(bounds["max_batch"], 2);
    let status = server.status();
    let kv = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kv")
        .unwrap()
        .clone();
    assert_eq!(
        kv["actions"][0]["timeout_ms"], 1234,
        "the file's timeout applies"
    );
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "max_batchh = 1\n").unwrap();
    let (ok, _, stderr) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("max_batchh"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "serve",
        "--actions",
        "/definitely/not/here",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "serve",
        "--actions",
        dir.path().to_str().unwrap(),
        "--jwt-secret",
        "short",
    ]);
    assert!(!ok);
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}

/// With `RUST_BACKTRACE=1`, as many Rust developers have it, a mistake in
/// the settings or a busy port is still one line, not a backtrace.
#[test]
fn user_errors_are_one_line_even_with_rust_backtrace_set() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port_in_use = taken.local_addr().unwrap().to_string();
    let actions = dir.path().to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "serve",
                "--actions",
                actions,
                "--jwt-secret",
                "short",
                "--listen",
                "127.0.0.1:0",
            ],
            "at least 16 bytes",
        ),
        (
            &["serve", "--actions", "/definitely/not/here"],
            "does not exist",
        ),
        (
            &["serve", "--actions", actions, "--listen", &port_in_use],
            "could not listen on",
        ),
        (&["token", "--sub", "alice"], "no secret"),
    ];
    for (args, reason) in cases {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(binary())
            .args(args)
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env("XDG_STATE_HOME", state.path())
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "1")
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(reason), "{args:?}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("backtrace") && !stderr.contains("  0: "),
            "{args:?} printed a backtrace: {stderr}"
        );
    }
}

#[test]
fn help_reads_well() {
    let (ok, stdout, _) = run(&["--help"]);
    assert!(ok);
    for command in ["serve", "token", "check"] {
        assert!(stdout.contains(command), "{stdout}");
    }
    let (ok, stdout, _) = run(&["serve", "--help"]);
    assert!(ok);
    assert!(
        stdout.contains("--actions <DIR>") && stdout.contains("SWITCHBOARD_LISTEN"),
        "{stdout}"
    );
}

fn bench_json(url: &str, args: &[&str]) -> Value {
    let out = Command::new(binary())
        .args(["bench", "--url", url, "--jwt-secret", SECRET, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_rpc_fanout_and_connections() {
    let server = ServerConfig::default()
        .arg("--auth-timeout-ms")
        .arg("0")
        .start();
    let url = server.ws_url();
    let rpc = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            bench_json(
                &url,
                &["rpc", "--conns", "2", "--inflight", "2", "--duration", "1s"],
            )
        }
    })
    .await
    .unwrap();
    assert!(rpc["rate"].as_f64().unwrap() > 0.0, "{rpc}");
    assert_eq!(rpc["errors"], 0);
    assert!(rpc["p99_us"].as_u64().unwrap() >= rpc["p50_us"].as_u64().unwrap());
    let fanout = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            bench_json(
                &url,
                &[
                    "fanout",
                    "--rooms",
                    "2",
                    "--subscribers",
                    "3",
                    "--rate",
                    "20",
                    "--duration",
                    "1s",
                ],
            )
        }
    })
    .await
    .unwrap();
    // 2 rooms x 3 subscribers, 20 messages/s in all: about 60 deliveries/s.
    let rate = fanout["rate"].as_f64().unwrap();
    assert!(rate > 20.0 && rate < 100.0, "{fanout}");
    let pid = server.pid().to_string();
    let conns = tokio::task::spawn_blocking(move || {
        bench_json(&url, &["conns", "--count", "50", "--pid", &pid])
    })
    .await
    .unwrap();
    assert_eq!(conns["connections"], 50);
    assert!(conns["rss_after_kib"].as_u64().unwrap() > 0, "{conns}");
}

/// `bench` as a tool: failed calls never count as throughput, the first
/// error is shown, and a run where most calls fail exits non-zero;
/// `--params` sends the params given; `--pid` reports the server's CPU;
/// `--busy-poll` runs the same.
#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_failures_apart_and_the_servers_cpu() {
    let server = ServerConfig::default().start();
    let url = server.ws_url();
    let pid = server.pid().to_string();
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new(binary())
                .args(["bench", "--url", &url, "--jwt-secret", SECRET, "rpc"])
                .args(["--method", "echo/fail", "--conns", "2", "--duration", "1s"])
                .args(["--params", r#"{"code": 1234, "message": "no such luck"}"#])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "every call failed: {stdout}");
    assert!(stderr.contains("operations failed"), "{stderr}");
    assert!(
        stdout.contains("no such luck"),
        "the first error is shown: {stdout}"
    );
    let rpc = tokio::task::spawn_blocking(move || {
        bench_json(
            &url,
            &[
                "--pid",
                &pid,
                // The generator polls instead of sleeping; the run is the same.
                "--busy-poll",
                "rpc",
                "--conns",
                "2",
                "--inflight",
                "4",
                "--duration",
                "1s",
                "--params",
                r#"["a", 1]"#,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(rpc["errors"], 0, "{rpc}");
    assert!(rpc["count"].as_u64().unwrap() > 0, "{rpc}");
    let busy = rpc["cpu"]["server"].as_f64().unwrap();
    assert!(busy > 0.0 && busy < 3.0, "{rpc}");
    assert!(
        rpc["per_server_cpu_second"].as_f64().unwrap() > 0.0,
        "{rpc}"
    );
    assert!(rpc["generator_bound"].is_boolean(), "{rpc}");
}

#[test]
fn the_floor_server_answers_echo_join_and_publish() {
    let mut floor = Command::new(binary().with_file_name("switchboard-floor"))
        .arg("127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(floor.stderr.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("floor listening on ")
        .unwrap()
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(&url).await;
        assert_eq!(
            c.call("echo", json!({"a": 1})).await["result"],
            json!({"a": 1})
        );
        assert_eq!(
            c.call("rpc.join", json!({"room": "r"})).await["result"]["room"],
            "r"
        );
        c.request(9, "rpc.publish", json!({"room": "r", "data": {"x": 2}}))
            .await;
        let (message, _) = c.recv_until(|v| v["method"] == "rpc.message").await;
        assert_eq!(message["params"]["data"], json!({"x": 2}));
    });
    let _ = floor.kill();
    let _ = floor.wait();
}

/// Issue #13, finding 4: the secret can come from a file, and a secret
/// given as a flag (readable by every local user in `/proc/<pid>/cmdline`)
/// is warned about.
#[tokio::test]
async fn the_secret_comes_from_a_file_and_a_secret_flag_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    // The flag works, with a warning; the environment does not warn.
    let flagged = ServerConfig::default()
        .no_secret()
        .arg("--jwt-secret")
        .arg(SECRET)
        .start();
    flagged.wait_for_log("the JWT secret was given with --jwt-secret");
    let (ok, _, stderr) = run(&["token", "--sub", "x", "--jwt-secret", SECRET]);
    assert!(ok && stderr.contains("--jwt-secret-file"), "{stderr}");
    let quiet = ServerConfig::default().start();
    assert_eq!(quiet.http_get("/healthz").0, 200);
    assert!(!quiet.log().contains("was given with --jwt-secret"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwt.secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = file.to_str().unwrap();
    // `token` reads it too; the server accepts what it mints.
    let (ok, stdout, stderr) = run(&["token", "--sub", "fay", "--jwt-secret-file", path]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    let minted = stdout.trim().to_owned();
    let server = ServerConfig::default()
        .no_secret()
        .arg("--jwt-secret-file")
        .arg(path)
        .start();
    let mut c = Client::connect(&format!("{}?token={minted}", server.ws_url())).await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "fay"
    );
    assert!(!server.log().contains("WARN"), "{}", server.log());
    assert!(!server.log().contains(SECRET));
    drop(server);
    // A file others can read is used, with a warning.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = ServerConfig::default()
        .no_secret()
        .arg("--jwt-secret-file")
        .arg(path)
        .start();
    server.wait_for_log("can be read by other users (mode 0644); chmod 600 it");
    drop(server);
    // Not both; and a short secret in a file is refused like any other.
    let (ok, _, stderr) = run(&[
        "token",
        "--sub",
        "x",
        "--jwt-secret",
        SECRET,
        "--jwt-secret-file",
        path,
    ]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
    std::fs::write(&file, "short\n").unwrap();
    let (ok, _, stderr) = run(&["token", "--sub", "x", "--jwt-secret-file", path]);
    assert!(!ok && stderr.contains("at least 16 bytes long"), "{stderr}");
}

/// The README's examples (its code blocks) keep secrets off the command
/// line.
#[test]
fn the_readme_never_passes_a_secret_as_a_flag() {
    let readme =
        std::fs::read_to_string(switchboard_tests::workspace_root().join("README.md")).unwrap();
    let mut in_code = false;
    let mut flagged = Vec::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.contains("--jwt-secret") && !line.contains("--jwt-secret-file") {
            flagged.push(line);
        }
    }
    assert!(flagged.is_empty(), "{flagged:#?}");
}

/// `bench reload` (its control connection is the library's Rust client):
/// swaps two builds of the reload probe and reports swap latencies and
/// the load beside a storm, with no failed call.
#[test]
fn bench_reload_swaps_two_builds_and_reports_the_storm() {
    let a = switchboard_tests::probe_variant("bench-a", &[("PROBE_VERSION", "bench-a")]);
    let b = switchboard_tests::probe_variant("bench-b", &[("PROBE_VERSION", "bench-b")]);
    let server = ServerConfig::default()
        .plugins(&[])
        .plugin_file("libprobe.so", &a)
        .start();
    let target = server.action_file("libprobe.so");
    let report = bench_json(
        &server.ws_url(),
        &[
            "reload",
            "--target",
            target.to_str().unwrap(),
            "--a",
            a.to_str().unwrap(),
            "--b",
            b.to_str().unwrap(),
            "--method",
            "probe/build",
            "--swaps",
            "3",
            "--conns",
            "2",
            "--inflight",
            "2",
            "--duration",
            "2s",
            "--windows",
            "1",
        ],
    );
    assert_eq!(report["swaps"], 3, "{report}");
    assert!(report["swap_p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["storm_swaps"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["storm"]["errors"], 0, "{report}");
    assert_eq!(report["steady"]["errors"], 0, "{report}");
}

/// `--log-format json` (here through its environment variable): every
/// log line is one JSON object, with the connection's span (id, user,
/// address) and, at debug level, the call's (method, id, generation).
#[tokio::test]
async fn json_logs_parse_and_carry_the_connection_and_call_spans() {
    let server = ServerConfig::default()
        .env("SWITCHBOARD_LOG_FORMAT", Some("json"))
        .env("RUST_LOG", Some("info,switchboard=debug"))
        .start();
    let mut c = server.connect_as("lena").await;
    assert_eq!(
        c.call("echo/sleep", json!({"ms": 1})).await["result"]["slept"],
        1
    );
    c.call("echo/panic", Value::Null).await;
    // The harness copies the server's stderr on a thread of its own: the
    // reply can arrive before the copy of a line written before it.
    server.wait_for_log(r#""method":"echo/panic""#);
    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{log}");
    let in_conn = lines
        .iter()
        .find(|l| l["span"]["name"] == "conn" && l["span"]["user"] == "lena")
        .unwrap_or_else(|| panic!("no line in the connection's span: {log}"));
    assert!(in_conn["span"]["id"].is_u64(), "{in_conn}");
    assert!(
        in_conn["span"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{in_conn}"
    );
    assert!(
        lines.iter().any(
            |l| l["spans"].as_array().is_some_and(|spans| spans
                .iter()
                .any(|s| s["name"] == "call"
                    && s["method"] == "echo/panic"
                    && s["generation"].is_u64()))
        ),
        "no line in a call's span: {log}"
    );
}
