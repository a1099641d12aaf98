//! The JavaScript client served at `/client.js`, tested in Node 20 with
//! its built-in test runner (`tests/js/client.test.mjs`) against a real
//! `switchboard serve` with the echo and chat plugins, and the auth-probe
//! plugin behind `POST /token`.
//!
//! Node must be installed (it is on the CI image); without it this test
//! fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use switchboard_tests::{SECRET, ServerConfig, workspace_root};

#[test]
fn the_js_client_passes_its_node_tests_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "[[rooms]]\npattern = \"burst\"\nhistory_size = 1000\n\n[[rooms]]\npattern = \"short:*\"\nhistory_size = 3\n",
    )
    .unwrap();
    let server = ServerConfig::default()
        .plugins(&["echo", "chat", "auth_probe"])
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--auth-chain")
        .arg("jwt,plugin")
        .arg("--token-endpoint")
        .arg("true")
        .start();
    let out = Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "--test"])
        .arg(workspace_root().join("tests/js/client.test.mjs"))
        .env("SWITCHBOARD_URL", format!("http://{}", server.addr))
        .env("SWITCHBOARD_SECRET", SECRET)
        .output()
        .unwrap_or_else(|e| {
            panic!("node could not run ({e}): the JS client tests need Node 20 or later")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the JS client's tests failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.log()
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}

#[test]
fn the_client_and_its_types_are_served_as_they_are_in_the_repository() {
    let server = ServerConfig::default().start();
    let (status, body) = server.http_get("/client.js");
    assert_eq!(status, 200);
    let file = std::fs::read_to_string(workspace_root().join("runtime/assets/client.js")).unwrap();
    assert_eq!(body, file);
    let (status, body) = server.http_get("/client.d.ts");
    assert_eq!(status, 200);
    assert!(body.contains("export function connect"), "{body}");
    // HEAD: the same answer without the body.
    let (status, body) = switchboard_tests::http_request(
        &server.addr,
        "HEAD /client.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((status, body.as_str()), (200, ""));
}

/// `static_dir`: a web app beside its socket, and nothing outside its
/// folder.
#[test]
fn a_static_folder_is_served_at_the_root_and_nothing_outside_it() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>chat</h1>").unwrap();
    std::fs::create_dir(site.path().join("app")).unwrap();
    std::fs::write(site.path().join("app/main.js"), "import '/client.js';").unwrap();
    std::fs::write(site.path().join(".secret"), "no").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", site.path().join("escape.txt")).unwrap();
    let server = ServerConfig::default()
        .arg("--static-dir")
        .arg(site.path().to_str().unwrap())
        .start();
    assert_eq!(server.http_get("/"), (200, "<h1>chat</h1>".to_owned()));
    assert_eq!(
        server.http_get("/app/main.js"),
        (200, "import '/client.js';".to_owned())
    );
    for refused in [
        "/.secret",
        "/escape.txt",
        "/../outside.txt",
        "/app/../../outside.txt",
        "/missing.html",
    ] {
        assert_eq!(server.http_get(refused).0, 404, "{refused}");
    }
    // The routes still come first.
    assert_eq!(server.http_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(server.http_get("/client.js").0, 200);
}

/// `/status` with `admin_token`: the token or 401 (counted); the admin
/// page is served to anyone (it holds no data).
#[test]
fn status_needs_the_admin_token_when_one_is_set() {
    let server = ServerConfig::default()
        .env("SWITCHBOARD_ADMIN_TOKEN", Some("admin-token-0123456789"))
        .start();
    let get = |auth: &str| {
        switchboard_tests::http_request(
            &server.addr,
            &format!("GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"),
        )
    };
    let (status, body) = get("");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    let (status, _) = get("Authorization: Bearer wrong\r\n");
    assert_eq!(status, 401);
    let (status, body) = get("Authorization: Bearer admin-token-0123456789\r\n");
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["admin_refused"], 2, "{status}");
    let (code, page) = server.http_get("/admin");
    assert_eq!(code, 200);
    assert!(page.contains("fetch(\"/status\""), "{page}");
}
