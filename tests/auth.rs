//! Signing in: anonymous callers, tokens in each of the three places, bad
//! and expired tokens, `rpc.auth`, and the development token `serve`
//! prints when no secret is configured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_tests::{Client, SECRET, ServerConfig, error_code, now, token, token_with};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn anonymous_callers_reach_only_public_actions() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    assert_eq!(c.call("echo", json!([1])).await["result"], json!([1]));
    let who = c.call("echo/whoami", Value::Null).await;
    assert_eq!(who["result"]["user"], Value::Null);
    assert!(who["result"]["conn"].as_u64().unwrap() > 0);
    let reply = c.call("kv/get", json!({"key": "k"})).await;
    assert_eq!(error_code(&reply), Some(-32001), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rpc.auth")
    );
    // Even a notification to a guarded action does nothing.
    c.send(&json!({"jsonrpc": "2.0", "method": "kv/set", "params": {"key": "anon", "value": 1}}))
        .await;
    let mut alice = server.connect_as("alice").await;
    assert_eq!(
        alice.call("kv/get", json!({"key": "anon"})).await["result"],
        Value::Null
    );
}

#[tokio::test]
async fn a_bearer_header_signs_in() {
    let server = ServerConfig::default().start();
    let mut request = server.ws_url().into_client_request().unwrap();
    let header = HeaderValue::from_str(&format!("Bearer {}", token("carol", 60))).unwrap();
    request.headers_mut().insert("authorization", header);
    let mut c = Client::try_connect(request).await.unwrap();
    let who = c.call("echo/whoami", Value::Null).await;
    assert_eq!(who["result"]["user"], "carol");
    assert_eq!(
        c.call("kv/incr", json!({"key": "c"})).await["result"],
        json!({"value": 1})
    );
}

#[tokio::test]
async fn a_query_token_signs_in() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("dave").await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "dave"
    );
}

#[tokio::test]
async fn rpc_auth_signs_in_and_refreshes() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    assert_eq!(
        error_code(&c.call("kv/keys", Value::Null).await),
        Some(-32001)
    );
    let t = token("erin", 120);
    let reply = c.call("rpc.auth", json!({"token": t})).await;
    assert_eq!(reply["result"]["user"], "erin");
    let expires_at = reply["result"]["expires_at"].as_i64().unwrap();
    assert!((expires_at - now() - 120).abs() <= 2);
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "erin"
    );
    assert!(c.call("kv/keys", Value::Null).await["result"].is_array());
    // Refresh with a later expiry for the same user.
    let reply = c
        .call("rpc.auth", json!({"token": token("erin", 600)}))
        .await;
    assert!(reply["result"]["expires_at"].as_i64().unwrap() > expires_at);
    // A token for someone else cannot take over the connection.
    let reply = c
        .call("rpc.auth", json!({"token": token("mallory", 600)}))
        .await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "erin"
    );
}

#[tokio::test]
async fn rpc_auth_refuses_bad_tokens_with_reasons() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    let cases = [
        (token("x", -60), "expired"),
        (
            token_with(
                "a-different-secret-0123456789",
                json!({"sub": "x", "exp": now() + 60}),
            ),
            "signature",
        ),
        ("not-a-token".to_owned(), "malformed"),
        (token_with(SECRET, json!({"sub": "x"})), "'exp'"),
        (token_with(SECRET, json!({"exp": now() + 60})), "'sub'"),
        (
            token_with(
                SECRET,
                json!({"sub": "x", "exp": now() + 60, "nbf": now() + 600}),
            ),
            "not valid yet",
        ),
    ];
    for (bad, reason) in cases {
        let reply = c.call("rpc.auth", json!({"token": bad})).await;
        assert_eq!(error_code(&reply), Some(-32001), "{reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "expected {reason:?} in {message:?}"
        );
    }
    let reply = c.call("rpc.auth", json!({})).await;
    assert_eq!(error_code(&reply), Some(-32602));
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        Value::Null
    );
}

#[tokio::test]
async fn bad_handshake_tokens_are_refused_with_401() {
    let server = ServerConfig::default().start();
    for (bad, reason) in [
        (token("x", -60), "expired"),
        (
            token_with(
                "a-different-secret-0123456789",
                json!({"sub": "x", "exp": now() + 60}),
            ),
            "signature",
        ),
        ("garbage".to_owned(), "malformed"),
    ] {
        let request = format!(
            "GET /ws?token={bad} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let (status, body) = switchboard_tests::http_request(&server.addr, &request);
        assert_eq!(status, 401, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], -32001);
        assert!(body["message"].as_str().unwrap().contains(reason), "{body}");
    }
    // Through a real client too: the handshake fails.
    let url = format!("{}?token={}", server.ws_url(), token("x", -60));
    assert!(
        Client::try_connect(url.into_client_request().unwrap())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_expiring_token_is_warned_then_closed_with_4002() {
    let server = ServerConfig::default()
        .arg("--jwt-leeway-secs")
        .arg("1")
        .start();
    let mut c = Client::connect(&format!("{}?token={}", server.ws_url(), token("fay", 2))).await;
    // Under 30 s left: the warning comes at once.
    let warning = c.recv().await;
    assert_eq!(warning["method"], "rpc.event", "{warning}");
    assert_eq!(warning["params"]["event"], "token.expiring");
    assert!(warning["params"]["data"]["in_secs"].as_u64().unwrap() <= 2);
    assert!(c.call("kv/keys", Value::Null).await["result"].is_array());
    // Then, at expiry plus leeway, the close.
    assert_eq!(c.expect_close().await, 4002);
}

#[tokio::test]
async fn refreshing_before_expiry_keeps_the_connection() {
    let server = ServerConfig::default()
        .arg("--jwt-leeway-secs")
        .arg("1")
        .start();
    let mut c = Client::connect(&format!("{}?token={}", server.ws_url(), token("gil", 2))).await;
    assert_eq!(c.recv().await["params"]["event"], "token.expiring");
    let reply = c
        .call("rpc.auth", json!({"token": token("gil", 600)}))
        .await;
    assert_eq!(reply["result"]["user"], "gil");
    // Wait past the first token's expiry plus leeway: still open.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    assert!(c.call("kv/keys", Value::Null).await["result"].is_array());
}

#[tokio::test]
async fn a_connection_that_never_signs_in_is_closed_with_4001() {
    let server = ServerConfig::default()
        .arg("--auth-timeout-ms")
        .arg("300")
        .start();
    let mut anon = server.connect().await;
    assert_eq!(anon.call("echo", json!([1])).await["result"], json!([1]));
    assert_eq!(anon.expect_close().await, 4001);
    // Signed in on the handshake, or by rpc.auth in time: not closed.
    let mut signed = server.connect_as("hal").await;
    let mut late = server.connect().await;
    late.call("rpc.auth", json!({"token": token("ida", 60)}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(signed.call("rpc.ping", Value::Null).await["result"], "pong");
    assert_eq!(late.call("rpc.ping", Value::Null).await["result"], "pong");
    // 0 lets anonymous connections stay: here it overrides a config file's
    // 300 ms, so were 0 not honoured the connection would be gone by the
    // ping, 600 ms on.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, "auth_timeout_ms = 300\n").unwrap();
    let server = ServerConfig::default()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--auth-timeout-ms")
        .arg("0")
        .start();
    let mut anon = server.connect().await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(anon.call("rpc.ping", Value::Null).await["result"], "pong");
}

#[tokio::test]
async fn without_a_secret_serve_prints_a_working_dev_token() {
    let server = ServerConfig::default().no_secret().start();
    // The banner's last line: by then every line of it has been read.
    let stdout = server.wait_for_stdout("token --sub alice");
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Connect:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no Connect line in {stdout:?}"))
        .to_owned();
    assert!(url.starts_with(&server.ws_url()), "{url}");
    let mut c = Client::connect(&url).await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "dev"
    );
    assert!(c.call("kv/keys", Value::Null).await["result"].is_array());
    // A token signed with any other secret is refused.
    let mut anon = server.connect().await;
    let reply = anon
        .call("rpc.auth", json!({"token": token("x", 60)}))
        .await;
    assert_eq!(error_code(&reply), Some(-32001));

    // The banner says how to sign in as someone else, and `token` does it
    // with the development secret, with no secret given.
    assert!(stdout.contains("token --sub alice"), "{stdout}");
    let mint = |sub: &str| {
        let out = std::process::Command::new(switchboard_tests::binary())
            .args(["token", "--sub", sub])
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env("XDG_STATE_HOME", server.state_home())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("development secret"), "{stderr}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let alice = mint("alice");
    let mut a = Client::connect(&format!("{}?token={alice}", server.ws_url())).await;
    assert_eq!(
        a.call("echo/whoami", Value::Null).await["result"]["user"],
        "alice"
    );
    // The secret is kept: a restarted server still accepts the token.
    let state_home = server.state_home().to_str().unwrap().to_owned();
    drop(a);
    let again = ServerConfig::default()
        .no_secret()
        .env("XDG_STATE_HOME", Some(&state_home))
        .start();
    let mut a = Client::connect(&format!("{}?token={alice}", again.ws_url())).await;
    assert_eq!(
        a.call("echo/whoami", Value::Null).await["result"]["user"],
        "alice"
    );
}

/// `POST /token`: the auth plugin judges the request's cookie, and the
/// answer is a one-time token the socket signs in with, once.
#[tokio::test]
async fn the_token_endpoint_turns_a_cookie_into_a_one_time_socket_token() {
    let server = ServerConfig::default()
        .plugins(&["auth_probe", "echo"])
        .arg("--auth-chain")
        .arg("jwt,plugin")
        .arg("--token-endpoint")
        .arg("true")
        .start();
    let post = |headers: &str, body: &str| {
        switchboard_tests::http_request(
            &server.addr,
            &format!(
                "POST /token HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, body) = post("Cookie: session=zoe\r\n", "");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let token = answer["token"].as_str().unwrap().to_owned();
    assert!(answer["expires_at"].as_i64().unwrap() > now());
    let mut zoe = Client::connect(&format!("{}?token={token}", server.ws_url())).await;
    assert_eq!(
        zoe.call("echo/whoami", Value::Null).await["result"]["user"],
        "zoe"
    );
    // One-time: the same token again is refused.
    let again = Client::try_connect(
        format!("{}?token={token}", server.ws_url())
            .into_client_request()
            .unwrap(),
    )
    .await;
    assert!(
        again.is_err(),
        "a one-time token opened a second connection"
    );
    // A token in the body is judged by the plugin too (an API key).
    let (status, body) = post(
        "Content-Type: application/json\r\n",
        r#"{"token": "key-yan"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // No credentials, or refused ones: 401 with the plugin's reason.
    let (status, body) = post("", "");
    assert_eq!(status, 401, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["code"], -32001);
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("no credentials"),
        "{body}"
    );
    let (status, body) = post("", "not json");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn the_token_endpoint_refuses_to_start_without_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(switchboard_tests::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--token-endpoint",
            "true",
        ])
        .arg("--actions")
        .arg(dir.path())
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token_endpoint needs an auth plugin"),
        "{stderr}"
    );
}
