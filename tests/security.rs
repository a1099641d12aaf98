//! The security model, black box: every way a token can be wrong, keys of
//! every kind (HS256, RS256 and ES256 from PEM, a JWKS file rotated while
//! the server runs), one-time tokens, the auth plugin and lifecycle hooks,
//! and per-action scopes — with a plugin that counts the calls reaching it,
//! to prove that refused calls never did.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::path::PathBuf;
use switchboard_tests::{
    Client, SECRET, Server, ServerConfig, binary, error_code, now, token, token_with,
    workspace_root,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/keys").join(name)
}

/// Signs `claims` with a PEM private key fixture (RS256 or ES256), with `kid`.
fn signed(alg: jsonwebtoken::Algorithm, key: &str, kid: Option<&str>, claims: Value) -> String {
    let pem = std::fs::read(fixture(key)).unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 300})
}

/// Handshake status for `token` in the query (101 on success).
fn handshake_status(server: &Server, token: &str) -> (u16, String) {
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(switchboard_tests::WAIT))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let mut response = Vec::new();
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    // Read the (short) body of a refusal too.
    if !response.starts_with(b"HTTP/1.1 101") {
        let _ = stream.read_to_end(&mut response);
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn every_kind_of_bad_token_is_refused_with_its_reason() {
    let server = ServerConfig::default()
        .arg("--jwt-issuer")
        .arg("https://issuer.example")
        .arg("--jwt-audience")
        .arg("switchboard")
        .start();
    let good = |extra: Value| {
        let mut c = json!({"sub": "x", "exp": now() + 60, "iss": "https://issuer.example", "aud": "switchboard"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let none_token = {
        use base64::Engine;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(good(json!({})))
        )
    };
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &good(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        (token_with(SECRET, good(json!({}))), None),
        (
            token_with(SECRET, good(json!({"exp": now() - 60}))),
            Some("expired"),
        ),
        (
            token_with(SECRET, good(json!({"nbf": now() + 600}))),
            Some("not valid yet"),
        ),
        (
            token_with("another-secret-0123456789abcdef", good(json!({}))),
            Some("signature"),
        ),
        (
            token_with(SECRET, good(json!({"iss": "https://evil.example"}))),
            Some("issuer"),
        ),
        (
            token_with(SECRET, good(json!({"aud": "someone-else"}))),
            Some("audience"),
        ),
        (none_token, Some("'none'")),
        (hs384, Some("HS384")),
        (
            signed(
                jsonwebtoken::Algorithm::RS256,
                "rsa-1.key",
                None,
                good(json!({})),
            ),
            Some("RS256"),
        ),
        ("a.b.c".to_owned(), Some("malformed")),
        // A configured issuer and audience must be present, and strings.
        (
            token_with(
                SECRET,
                json!({"sub": "x", "exp": now() + 60, "aud": "switchboard"}),
            ),
            Some("'iss'"),
        ),
        (
            token_with(
                SECRET,
                json!({"sub": "x", "exp": now() + 60, "iss": "https://issuer.example"}),
            ),
            Some("'aud'"),
        ),
        (token_with(SECRET, good(json!({"iss": 5}))), Some("401")),
        (token_with(SECRET, good(json!({"aud": 7}))), Some("401")),
    ];
    for (token, refusal) in cases {
        let (status, text) = handshake_status(&server, &token);
        match refusal {
            None => assert_eq!(status, 101, "{text}"),
            Some(reason) => {
                assert_eq!(status, 401, "{text}");
                assert!(text.contains(reason), "expected {reason:?} in {text}");
            }
        }
    }
    // The log never carries a token or the secret.
    let log = server.log();
    assert!(!log.contains(SECRET));
    assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
}

#[tokio::test]
async fn mutated_tokens_never_sign_in() {
    let server = ServerConfig::default().start();
    let good = token("fuzz", 300);
    let mut c = server.connect().await;
    let bytes = good.as_bytes();
    let mut refused = 0;
    // Flip, drop and duplicate characters all along the token.
    for i in (0..bytes.len()).step_by(3) {
        for mutation in 0..3 {
            let mut m = bytes.to_vec();
            match mutation {
                0 => m[i] = if m[i] == b'A' { b'B' } else { b'A' },
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, m[i]),
            }
            let mutated = String::from_utf8(m).unwrap();
            if mutated == good {
                continue;
            }
            let reply = c.call("rpc.auth", json!({"token": mutated})).await;
            assert_eq!(
                error_code(&reply),
                Some(-32001),
                "mutation {mutation} at {i} signed in: {reply}"
            );
            refused += 1;
        }
    }
    assert!(refused > 100);
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        Value::Null
    );
    assert_eq!(
        c.call("rpc.auth", json!({"token": good})).await["result"]["user"],
        "fuzz"
    );
}

#[tokio::test]
async fn a_one_time_token_opens_one_connection() {
    let server = ServerConfig::default().start();
    let once = token_with(
        SECRET,
        json!({"sub": "once", "exp": now() + 60, "jti": "nonce-1"}),
    );
    let mut first = Client::connect(&format!("{}?token={once}", server.ws_url())).await;
    assert_eq!(
        first.call("echo/whoami", Value::Null).await["result"]["user"],
        "once"
    );
    let (status, text) = handshake_status(&server, &once);
    assert_eq!(status, 401);
    assert!(text.contains("already been used"), "{text}");
    let mut other = server.connect().await;
    let reply = other.call("rpc.auth", json!({"token": once})).await;
    assert_eq!(error_code(&reply), Some(-32001));
    // A different jti is a different token.
    let twice = token_with(
        SECRET,
        json!({"sub": "once", "exp": now() + 60, "jti": "nonce-2"}),
    );
    assert_eq!(
        other.call("rpc.auth", json!({"token": twice})).await["result"]["user"],
        "once"
    );
}

#[tokio::test]
async fn rs256_and_es256_public_keys_from_pem() {
    for (alg, key, public) in [
        (jsonwebtoken::Algorithm::RS256, "rsa-1.key", "rsa-1.pub"),
        (jsonwebtoken::Algorithm::ES256, "ec-1.key", "ec-1.pub"),
    ] {
        let server = ServerConfig::default()
            .no_secret()
            .arg("--jwt-public-key")
            .arg(fixture(public).to_str().unwrap())
            .start();
        let t = signed(alg, key, None, claims("pem"));
        let mut c = Client::connect(&format!("{}?token={t}", server.ws_url())).await;
        assert_eq!(
            c.call("echo/whoami", Value::Null).await["result"]["user"],
            "pem"
        );
        // HS256 with no secret configured is refused, even signed with the
        // public key's bytes (the algorithm-confusion attack).
        let public_pem = std::fs::read_to_string(fixture(public)).unwrap();
        let confused = token_with(&public_pem, claims("pem"));
        let (status, text) = handshake_status(&server, &confused);
        assert_eq!(status, 401, "{text}");
        assert!(text.contains("HS256"), "{text}");
        // No dev token is printed when keys are configured.
        assert!(!server.stdout().contains("Development token"));
    }
}

#[tokio::test]
async fn a_jwks_file_is_used_by_kid_and_reloaded_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(fixture("jwks-1.json"), &jwks).unwrap();
    let server = ServerConfig::default()
        .arg("--jwks-file")
        .arg(jwks.to_str().unwrap())
        .start();
    let rsa1 = signed(
        jsonwebtoken::Algorithm::RS256,
        "rsa-1.key",
        Some("rsa-1"),
        claims("r1"),
    );
    let ec1 = signed(
        jsonwebtoken::Algorithm::ES256,
        "ec-1.key",
        Some("ec-1"),
        claims("e1"),
    );
    let rsa2 = signed(
        jsonwebtoken::Algorithm::RS256,
        "rsa-2.key",
        Some("rsa-2"),
        claims("r2"),
    );
    assert_eq!(handshake_status(&server, &rsa1).0, 101);
    assert_eq!(handshake_status(&server, &ec1).0, 101);
    let (status, text) = handshake_status(&server, &rsa2);
    assert_eq!(status, 401);
    assert!(text.contains("no key with id 'rsa-2'"), "{text}");
    // A key signed by rsa-2 but labelled rsa-1 fails the signature check.
    let forged = signed(
        jsonwebtoken::Algorithm::RS256,
        "rsa-2.key",
        Some("rsa-1"),
        claims("r2"),
    );
    assert!(handshake_status(&server, &forged).1.contains("signature"));
    // Rotate: rsa-1 out, rsa-2 in, with the server running.
    std::fs::write(&jwks, std::fs::read(fixture("jwks-2.json")).unwrap()).unwrap();
    let started = std::time::Instant::now();
    while handshake_status(&server, &rsa2).0 != 101 {
        assert!(
            started.elapsed() < switchboard_tests::WAIT,
            "the rotated JWKS was never picked up"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(handshake_status(&server, &rsa1).0, 401);
    assert_eq!(handshake_status(&server, &ec1).0, 101);
    // A broken file keeps the last good keys.
    std::fs::write(&jwks, b"{ not json").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    assert_eq!(handshake_status(&server, &rsa2).0, 101);
    server.wait_for_log("keeping the previous keys");
}

#[tokio::test]
async fn scopes_guard_actions_and_refused_calls_never_reach_the_plugin() {
    let server = ServerConfig::default().plugins(&["auth_probe"]).start();
    let mut anon = server.connect().await;
    let mut plain = server.connect_as("pat").await;
    let scoped_token = token_with(
        SECRET,
        json!({"sub": "sam", "exp": now() + 60, "scopes": ["probe:read", "other"]}),
    );
    let mut scoped = Client::connect(&format!("{}?token={scoped_token}", server.ws_url())).await;
    // Refused calls, by every route.
    assert_eq!(
        error_code(&anon.call("probe/guarded", Value::Null).await),
        Some(-32001)
    );
    assert_eq!(
        error_code(&anon.call("probe/scoped", Value::Null).await),
        Some(-32001)
    );
    let reply = plain.call("probe/scoped", Value::Null).await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("probe:read")
    );
    anon.send(&json!([{"jsonrpc": "2.0", "method": "probe/guarded"}, {"jsonrpc": "2.0", "method": "probe/scoped"}])).await;
    plain
        .send(&json!({"jsonrpc": "2.0", "method": "probe/scoped"}))
        .await;
    assert_eq!(anon.call("rpc.ping", Value::Null).await["result"], "pong");
    assert_eq!(plain.call("rpc.ping", Value::Null).await["result"], "pong");
    // None of them reached the plugin.
    assert_eq!(
        anon.call("probe/count", Value::Null).await["result"],
        json!({"guarded": 0, "scoped": 0})
    );
    // Allowed calls do, and see the scopes.
    assert_eq!(
        plain.call("probe/guarded", Value::Null).await["result"]["user"],
        "pat"
    );
    let reply = scoped.call("probe/scoped", Value::Null).await;
    assert_eq!(reply["result"]["scopes"], json!(["probe:read", "other"]));
    assert_eq!(
        anon.call("probe/count", Value::Null).await["result"],
        json!({"guarded": 1, "scoped": 1})
    );
    // rpc.actions lists only what each may call.
    let paths = |v: Value| -> Vec<String> {
        v["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["path"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        paths(anon.call("rpc.actions", Value::Null).await),
        ["probe/count", "probe/events"]
    );
    assert_eq!(
        paths(plain.call("rpc.actions", Value::Null).await),
        ["probe/count", "probe/events", "probe/guarded", "probe/send"]
    );
    assert_eq!(
        paths(scoped.call("rpc.actions", Value::Null).await),
        [
            "probe/count",
            "probe/events",
            "probe/guarded",
            "probe/scoped",
            "probe/send"
        ]
    );
}

#[tokio::test]
async fn the_auth_plugin_accepts_and_refuses_in_the_chain() {
    let server = ServerConfig::default()
        .plugins(&["auth_probe"])
        .arg("--auth-chain")
        .arg("jwt,plugin")
        .start();
    // An API key (not a JWT) falls through to the plugin.
    let mut api = Client::connect(&format!("{}?token=key-alice", server.ws_url())).await;
    let reply = api.call("probe/scoped", Value::Null).await;
    assert_eq!(reply["result"]["user"], "alice");
    assert_eq!(reply["result"]["data"], json!({"via": "api-key"}));
    // A JWT still works first.
    let mut jwt = server.connect_as("bob").await;
    assert_eq!(
        jwt.call("probe/guarded", Value::Null).await["result"]["user"],
        "bob"
    );
    // A cookie, with no token at all.
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=carol"),
    );
    let mut cookie = Client::try_connect(request).await.unwrap();
    assert_eq!(
        cookie.call("probe/guarded", Value::Null).await["result"]["user"],
        "carol"
    );
    // The plugin's refusal reaches the client, on the handshake and on rpc.auth.
    let (status, text) = handshake_status(&server, "key-revoked");
    assert_eq!(status, 401);
    assert!(text.contains("this API key was revoked"), "{text}");
    let mut anon = server.connect().await;
    let reply = anon.call("rpc.auth", json!({"token": "key-revoked"})).await;
    assert_eq!(error_code(&reply), Some(-32001));
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    assert_eq!(
        anon.call("rpc.auth", json!({"token": "key-dan"})).await["result"]["user"],
        "dan"
    );
}

#[tokio::test]
async fn lifecycle_hooks_see_every_event_in_order() {
    let mut server = ServerConfig::default()
        .plugins(&["auth_probe", "echo"])
        .arg("--auth-chain")
        .arg("jwt,plugin")
        .start();
    let mut c = server.connect().await;
    let who = c.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    c.call("rpc.auth", json!({"token": "key-revoked"})).await;
    c.call("rpc.auth", json!({"token": "key-eve"})).await;
    c.call("echo/panic", Value::Null).await;
    c.close().await;
    let events = loop {
        let mut probe = server.connect().await;
        let events = probe.call("probe/events", Value::Null).await["result"].clone();
        let mine: Vec<String> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .filter(|e| e.split(' ').nth(1) == Some(&who.to_string()))
            .collect();
        if mine.iter().any(|e| e.starts_with("disconnect")) {
            break mine;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "connect",
            "auth_failure",
            "auth_success",
            "error",
            "disconnect"
        ],
        "{events:?}"
    );
    assert!(events[1].contains("revoked"), "{events:?}");
    assert!(events[2].contains(" eve "), "{events:?}");
    assert!(events[3].contains("echo/panic"), "{events:?}");
    assert!(
        events[3].contains(" eve "),
        "the failed call's user: {events:?}"
    );
    server.signal_term();
    assert!(server.wait_exit().success());
}

#[test]
fn the_token_command_mints_scopes_rooms_one_time_and_asymmetric_tokens() {
    let mint = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .arg("token")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let decode = |t: &str| -> Value {
        use base64::Engine;
        let payload = t.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    let t = mint(&[
        "--sub",
        "a",
        "--scope",
        "x:read",
        "--scope",
        "y",
        "--room",
        "chat:1",
        "--jti",
        "auto",
        "--jwt-secret",
        SECRET,
    ]);
    let c = decode(&t);
    assert_eq!(c["scopes"], json!(["x:read", "y"]));
    assert_eq!(c["rooms"], json!(["chat:1"]));
    assert_eq!(c["jti"].as_str().unwrap().len(), 64);
    let rsa = mint(&[
        "--sub",
        "b",
        "--key",
        fixture("rsa-1.key").to_str().unwrap(),
        "--kid",
        "rsa-1",
    ]);
    let header: Value = {
        use base64::Engine;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(rsa.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "rsa-1");
    let ec = mint(&[
        "--sub",
        "c",
        "--key",
        fixture("ec-1.key").to_str().unwrap(),
        "--iss",
        "me",
        "--aud",
        "you",
    ]);
    assert_eq!(decode(&ec)["iss"], "me");
    let out = std::process::Command::new(binary())
        .args([
            "token",
            "--sub",
            "d",
            "--key",
            fixture("jwks-1.json").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no RSA or EC"));
}

#[tokio::test]
async fn a_far_future_expiry_and_repeated_sign_ins_in_a_batch_are_handled() {
    // With no cap on token lifetimes (by default such a token is refused:
    // see tests/abuse.rs), an expiry far past what a clock can hold does
    // not break the connection.
    let server = ServerConfig::default()
        .arg("--jwt-max-lifetime-secs")
        .arg("0")
        .start();
    let forever = token_with(SECRET, json!({"sub": "old", "exp": u64::MAX / 2}));
    let mut c = Client::connect(&format!("{}?token={forever}", server.ws_url())).await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "old"
    );
    assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    // One rpc.auth per batch; the rest are refused.
    let mut anon = server.connect().await;
    anon.send(&json!([
        {"jsonrpc": "2.0", "id": 1, "method": "rpc.auth", "params": {"token": token("b1", 60)}},
        {"jsonrpc": "2.0", "id": 2, "method": "rpc.auth", "params": {"token": token("b1", 60)}}
    ]))
    .await;
    let replies = anon.recv().await;
    assert_eq!(replies[0]["result"]["user"], "b1", "{replies}");
    assert_eq!(error_code(&replies[1]), Some(-32600), "{replies}");
}
