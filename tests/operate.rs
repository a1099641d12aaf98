//! Operating a server: the HTTP API for backends (`POST /api`) reaching
//! real WebSocket clients, revocation, the admin credential on every
//! guarded path, `/metrics` scraped and parsed as calls, joins and reloads
//! happen (with bounded labels), and the rate limits per user, per action
//! and on `rpc.publish`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::Duration;
use switchboard_tests::{Client, Server, ServerConfig, error_code, now, probe_variant, token_with};

const ADMIN: &str = "admin-token-0123456789";

/// `POST /api` with `body`, presenting `auth` as the bearer token if any.
fn post_api(server: &Server, auth: Option<&str>, body: &str) -> (u16, String) {
    server.http_with("POST", "/api", auth, body)
}

/// One API call with the admin token; its reply object.
fn api(server: &Server, method: &str, params: Value) -> Value {
    server.api(ADMIN, method, params)
}

/// `GET path` presenting `auth` as the bearer token if any.
fn get(server: &Server, path: &str, auth: Option<&str>) -> (u16, String) {
    server.http_with("GET", path, auth, "")
}

fn with_admin() -> ServerConfig {
    ServerConfig::default().env("SWITCHBOARD_ADMIN_TOKEN", Some(ADMIN))
}

/// A token for `user` with an `iat` claim (and a `jti`, if given).
fn token_issued(user: &str, iat: i64, jti: Option<&str>) -> String {
    let mut claims = json!({"sub": user, "exp": now() + 3600, "iat": iat});
    if let Some(jti) = jti {
        claims["jti"] = json!(jti);
    }
    token_with(switchboard_tests::SECRET, claims)
}

async fn connect_with(server: &Server, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", server.ws_url())).await
}

/// This connection's id, as `echo/whoami` says.
async fn conn_id(client: &mut Client) -> u64 {
    client.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap()
}

/// Every method of the API, each reaching real clients (or reading what
/// they did), one batch, and the refusals with the socket's codes.
#[tokio::test]
async fn the_api_methods_reach_real_websocket_clients() {
    let server = with_admin().start();
    let mut ann = server.connect_as("ann").await;
    let mut bob = server.connect_as("bob").await;
    let ann_conn = conn_id(&mut ann).await;
    let bob_conn = conn_id(&mut bob).await;
    let joined = ann.call("rpc.join", json!({"room": "news"})).await;
    assert!(joined.get("result").is_some(), "{joined}");

    // publish: ann, a member, gets it; the offset comes back.
    let reply = api(
        &server,
        "publish",
        json!({"room": "news", "data": {"n": 1}}),
    );
    assert_eq!(reply["result"], json!({"offset": 1}), "{reply}");
    let message = ann.recv().await;
    assert_eq!(message["method"], "rpc.message", "{message}");
    assert_eq!(message["params"]["data"], json!({"n": 1}), "{message}");

    // broadcast, with bob left out.
    let reply = api(
        &server,
        "broadcast",
        json!({"event": "notice", "data": {"all": true}, "except": [bob_conn]}),
    );
    assert_eq!(reply["result"]["queued_here"], 1, "{reply}");
    let event = ann.recv().await;
    assert_eq!(
        event["params"],
        json!({"event": "notice", "data": {"all": true}})
    );

    // send: to one connection, and to a user's connections.
    let reply = api(
        &server,
        "send",
        json!({"conn": bob_conn, "event": "direct", "data": 1}),
    );
    assert_eq!(reply["result"]["sent"], true, "{reply}");
    assert_eq!(bob.recv().await["params"]["event"], "direct");
    let reply = api(
        &server,
        "send",
        json!({"user": "ann", "event": "mine", "data": 2}),
    );
    assert_eq!(reply["result"]["queued_here"], 1, "{reply}");
    assert_eq!(
        ann.recv().await["params"],
        json!({"event": "mine", "data": 2})
    );

    // presence, history, rooms, info.
    let reply = api(&server, "presence", json!({"room": "news"}));
    assert_eq!(
        reply["result"]["members"],
        json!([{"user": "ann", "conn": ann_conn}]),
        "{reply}"
    );
    api(&server, "publish", json!({"room": "news", "data": "two"}));
    assert_eq!(ann.recv().await["params"]["offset"], 2);
    let reply = api(&server, "history", json!({"room": "news", "since": 0}));
    let history = &reply["result"];
    assert_eq!(history["offset"], 2, "{reply}");
    assert_eq!(
        history["messages"],
        json!([{"offset": 1, "data": {"n": 1}}, {"offset": 2, "data": "two"}])
    );
    assert!(history["epoch"].is_string(), "{reply}");
    let reply = api(
        &server,
        "history",
        json!({"room": "news", "since": 1, "limit": 1}),
    );
    assert_eq!(
        reply["result"]["messages"],
        json!([{"offset": 2, "data": "two"}])
    );
    bob.call("rpc.join", json!({"room": "other"})).await;
    let reply = api(&server, "rooms", json!({"prefix": "ne"}));
    assert_eq!(
        reply["result"]["rooms"],
        json!([{"room": "news", "members": 1}])
    );
    let reply = api(&server, "rooms", Value::Null);
    assert_eq!(
        reply["result"]["rooms"].as_array().unwrap().len(),
        2,
        "{reply}"
    );
    let reply = api(&server, "info", Value::Null);
    let info = &reply["result"];
    assert_eq!(info["connections"], 2, "{reply}");
    assert_eq!(info["rooms"], 2, "{reply}");
    assert!(info["uptime_secs"].is_u64(), "{reply}");
    assert!(
        info["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "echo"),
        "{reply}"
    );

    // A batch: replies for the calls with ids, none for the notification.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "publish", "params": {"room": "news", "data": 3}},
        {"jsonrpc": "2.0", "method": "send", "params": {"user": "bob", "event": "quiet", "data": 0}},
        {"jsonrpc": "2.0", "id": "b", "method": "nope"},
        {"jsonrpc": "2.0", "id": "c", "method": "publish", "params": {"room": "news"}},
        {"jsonrpc": "2.0", "id": null, "method": "info"},
    ]);
    let (status, body) = post_api(&server, Some(ADMIN), &batch.to_string());
    assert_eq!(status, 200, "{body}");
    let replies: Value = serde_json::from_str(&body).unwrap();
    let replies = replies.as_array().unwrap();
    assert_eq!(replies.len(), 4, "{body}");
    assert!(
        replies[3]["id"].is_null() && replies[3]["result"]["version"].is_string(),
        "a request with a null id is answered: {body}"
    );
    assert_eq!(
        replies[0],
        json!({"jsonrpc": "2.0", "id": "a", "result": {"offset": 3}})
    );
    assert_eq!(replies[1]["id"], "b");
    assert_eq!(error_code(&replies[1]), Some(-32601), "{body}");
    assert_eq!(replies[2]["id"], "c");
    assert_eq!(error_code(&replies[2]), Some(-32602), "{body}");
    assert!(
        replies[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data"),
        "a message a person can act on: {body}"
    );
    assert_eq!(ann.recv().await["params"]["offset"], 3);
    assert_eq!(bob.recv().await["params"]["event"], "quiet");

    // Not JSON, an empty batch, a bad room name.
    let (_, body) = post_api(&server, Some(ADMIN), "{nope");
    assert_eq!(
        error_code(&serde_json::from_str(&body).unwrap()),
        Some(-32700)
    );
    let (_, body) = post_api(&server, Some(ADMIN), "[]");
    assert_eq!(
        error_code(&serde_json::from_str(&body).unwrap()),
        Some(-32600)
    );
    let reply = api(&server, "publish", json!({"room": "has space", "data": 1}));
    assert_eq!(error_code(&reply), Some(-32602), "{reply}");

    // disconnect: one connection with the code given, then a user's.
    let reply = api(
        &server,
        "disconnect",
        json!({"conn": bob_conn, "code": 4000, "reason": "maintenance"}),
    );
    assert_eq!(reply["result"]["closed"], 1, "{reply}");
    assert_eq!(bob.expect_close().await, 4000);
    let reply = api(&server, "disconnect", json!({"user": "ann"}));
    assert_eq!(reply["result"]["closed_here"], 1, "{reply}");
    assert_eq!(ann.expect_close().await, 4003);
    let reply = api(
        &server,
        "disconnect",
        json!({"conn": bob_conn, "code": 1006}),
    );
    assert_eq!(error_code(&reply), Some(-32602), "{reply}");
}

/// `revoke {user}` closes the user's connections with 4002 and refuses
/// tokens issued up to then (a newer one signs in); `revoke {jti}` closes
/// the connection signed in with that token.
#[tokio::test]
async fn revoked_tokens_are_refused_and_their_connections_closed() {
    let server = with_admin().start();
    let old = token_issued("mallory", now() - 60, None);
    let mut mallory = connect_with(&server, &old).await;
    let mut other = server.connect_as("carol").await;
    let reply = api(
        &server,
        "revoke",
        json!({"user": "mallory", "until": now() + 600}),
    );
    assert_eq!(reply["result"]["closed_here"], 1, "{reply}");
    let revoked_at = reply["result"]["revoked_at"].as_i64().unwrap();
    assert_eq!(mallory.expect_close().await, 4002);
    // The same token is refused on a new handshake, with the reason.
    let refused = Client::try_connect(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}?token={old}",
            server.ws_url()
        ))
        .unwrap(),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("revoked"), "{body}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    // A token issued after the revocation signs in.
    let fresh = token_issued("mallory", revoked_at + 1, None);
    let mut again = connect_with(&server, &fresh).await;
    assert_eq!(
        again.call("echo/whoami", Value::Null).await["result"]["user"],
        "mallory"
    );
    // Another user was never touched.
    assert_eq!(
        other.call("echo/whoami", Value::Null).await["result"]["user"],
        "carol"
    );

    // One token by its jti.
    let jti_token = token_issued("dave", now(), Some("token-42"));
    let mut dave = connect_with(&server, &jti_token).await;
    let reply = api(
        &server,
        "revoke",
        json!({"jti": "token-42", "until": now() + 600}),
    );
    assert_eq!(reply["result"]["closed_here"], 1, "{reply}");
    assert_eq!(dave.expect_close().await, 4002);
    assert_eq!(
        again.call("echo/whoami", Value::Null).await["result"]["user"],
        "mallory",
        "a jti revocation touches that token only"
    );
    let reply = api(&server, "revoke", json!({"user": "x", "until": now() - 1}));
    assert_eq!(error_code(&reply), Some(-32602), "{reply}");
}

/// Every guarded path (`/status`, `POST /api`, `/metrics`) answers 401 to
/// a missing or wrong admin token, and counts it; `metrics_public` opens
/// `/metrics` alone.
#[test]
fn every_admin_path_refuses_a_missing_or_wrong_credential() {
    let server = with_admin().start();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "info"}).to_string();
    let mut refused = 0;
    for auth in [None, Some("wrong"), Some("admin-token-012345678")] {
        let (status, body) = get(&server, "/status", auth);
        assert_eq!(status, 401, "/status with {auth:?}: {body}");
        let (status, body) = post_api(&server, auth, &call);
        assert_eq!(status, 401, "/api with {auth:?}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let (status, body) = get(&server, "/metrics", auth);
        assert_eq!(status, 401, "/metrics with {auth:?}: {body}");
        refused += 3;
    }
    let (status, _) = post_api(&server, Some(ADMIN), &call);
    assert_eq!(status, 200);
    let (status, metrics) = get(&server, "/metrics", Some(ADMIN));
    assert_eq!(status, 200);
    assert_eq!(
        sum(&metrics, "switchboard_admin_refused_total", ""),
        f64::from(refused)
    );
    let (status, body) = get(&server, "/status", Some(ADMIN));
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["admin_refused"], refused);

    let public = with_admin().arg("--metrics-public").arg("true").start();
    let (status, _) = get(&public, "/metrics", None);
    assert_eq!(status, 200, "metrics_public opens /metrics");
    let (status, _) = get(&public, "/status", None);
    assert_eq!(status, 401, "and nothing else");
    let (status, _) = post_api(&public, None, &call);
    assert_eq!(status, 401);
}

/// The samples of `name` whose labels contain `labels`, summed.
fn sum(metrics: &str, name: &str, labels: &str) -> f64 {
    samples(metrics)
        .filter(|(n, l, _)| *n == name && l.contains(labels))
        .map(|(_, _, v)| v)
        .sum()
}

/// Every sample: (name, labels, value).
fn samples(metrics: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}'), value),
                None => (series, "", value),
            }
        })
}

/// `/metrics` parses, its counters move as calls, joins, publishes,
/// sign-in failures and reloads happen, and its label values stay bounded
/// after 1,000 distinct rooms, users and unknown methods.
#[tokio::test]
async fn metrics_move_with_what_happens_and_labels_stay_bounded() {
    let server = with_admin()
        .plugin_file(
            "libprobe.so",
            &probe_variant("metrics-a", &[("PROBE_VERSION", "metrics-a")]),
        )
        .arg("--reload-debounce-ms")
        .arg("40")
        .start();
    let scrape = || {
        let (status, body) = get(&server, "/metrics", Some(ADMIN));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        body
    };
    let before = scrape();
    let mut ann = server.connect_as("ann").await;
    for _ in 0..3 {
        assert!(
            ann.call("echo/count", Value::Null)
                .await
                .get("result")
                .is_some()
        );
    }
    let refused = ann.call("echo/error", json!({"x": 1})).await;
    assert_eq!(error_code(&refused), Some(1000));
    ann.call("nope/missing", Value::Null).await;
    ann.call("rpc.join", json!({"room": "lobby"})).await;
    ann.call("rpc.publish", json!({"room": "lobby", "data": 1}))
        .await;
    let bad = Client::try_connect(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}?token=not-a-token",
            server.ws_url()
        ))
        .unwrap(),
    )
    .await;
    assert!(bad.is_err());
    server.install(
        "libprobe.so",
        &probe_variant("metrics-b", &[("PROBE_VERSION", "metrics-b")]),
    );
    switchboard_tests::wait_until("the probe reloads", || {
        let status: Value = serde_json::from_str(&get(&server, "/status", Some(ADMIN)).1).unwrap();
        status["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["version"] == "metrics-b")
    });
    let after = scrape();
    let moved = |name: &str, labels: &str| sum(&after, name, labels) - sum(&before, name, labels);
    assert_eq!(
        moved(
            "switchboard_calls_total",
            r#"action="echo/count",outcome="ok""#
        ),
        3.0
    );
    assert_eq!(
        moved(
            "switchboard_calls_total",
            r#"action="echo/error",outcome="action_error""#
        ),
        1.0
    );
    assert_eq!(
        moved(
            "switchboard_calls_total",
            r#"action="unknown",outcome="-32601""#
        ),
        1.0
    );
    assert_eq!(
        moved(
            "switchboard_call_duration_seconds_count",
            r#"action="echo/count""#
        ),
        3.0
    );
    assert_eq!(
        moved("switchboard_calls_total", r#"action="rpc.join""#),
        1.0
    );
    assert_eq!(moved("switchboard_publishes_total", ""), 1.0);
    assert_eq!(moved("switchboard_deliveries_total", ""), 1.0);
    assert_eq!(moved("switchboard_connections_opened_total", ""), 1.0);
    assert_eq!(sum(&after, "switchboard_connections_open", ""), 1.0);
    assert_eq!(sum(&after, "switchboard_rooms", ""), 1.0);
    assert_eq!(sum(&after, "switchboard_room_members", ""), 1.0);
    assert_eq!(
        moved("switchboard_auth_failures_total", r#"reason="malformed""#),
        1.0
    );
    assert_eq!(
        moved("switchboard_reloads_total", r#"result="loaded""#),
        1.0
    );
    assert_eq!(
        moved("switchboard_reload_swap_duration_seconds_count", ""),
        1.0
    );
    assert!(moved("switchboard_preflight_duration_seconds_count", "") >= 1.0);
    assert!(sum(&after, "switchboard_generations", r#"state="serving""#) >= 3.0);

    // A recovery: rejoin with since.
    let epoch = ann.call("rpc.join", json!({"room": "lobby"})).await["result"]["epoch"].clone();
    ann.call("rpc.leave", json!({"room": "lobby"})).await;
    let joined = ann
        .call(
            "rpc.join",
            json!({"room": "lobby", "since": 0, "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["result"]["recovered"], true, "{joined}");

    // 1,000 distinct rooms (API publishes), users (API sends), and
    // unknown methods from a client: none becomes a label.
    let label_values = |text: &str| -> usize { samples(text).count() };
    let before_rooms = scrape();
    for chunk in 0..20 {
        let batch: Vec<Value> = (0..50)
            .flat_map(|i| {
                let n = chunk * 50 + i;
                [
                    json!({"jsonrpc": "2.0", "id": n, "method": "publish",
                           "params": {"room": format!("room-{n}"), "data": n}}),
                    json!({"jsonrpc": "2.0", "method": "send",
                           "params": {"user": format!("user-{n}"), "event": "e", "data": n}}),
                ]
            })
            .collect();
        let (status, body) = post_api(&server, Some(ADMIN), &Value::Array(batch).to_string());
        assert_eq!(status, 200, "{body}");
    }
    let mid = scrape();
    assert!(
        label_values(&mid) <= label_values(&before_rooms) + 2,
        "1,000 rooms and users added at most the API's own two series"
    );
    for n in 0..1000 {
        ann.request(n, &format!("nope/method-{n}"), Value::Null)
            .await;
    }
    for _ in 0..1000 {
        let (reply, _) = ann.recv_until(|v| v.get("id").is_some()).await;
        assert_eq!(error_code(&reply), Some(-32601), "{reply}");
    }
    let last = scrape();
    let series: Vec<&str> = last.lines().filter(|l| !l.starts_with('#')).collect();
    for forbidden in ["room-", "user-", "nope/", "\"ann\"", "lobby"] {
        assert!(
            !series.iter().any(|l| l.contains(forbidden)),
            "a room, user or method name became a label: {forbidden}"
        );
    }
    assert_eq!(
        label_values(&last),
        label_values(&mid),
        "1,000 unknown methods added no series"
    );
    // Every action label is a loaded plugin's path, a built-in or `unknown`.
    let status: Value = serde_json::from_str(&get(&server, "/status", Some(ADMIN)).1).unwrap();
    let mut known: Vec<String> = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["actions"].as_array().unwrap().iter())
        .map(|a| a["path"].as_str().unwrap().to_owned())
        .collect();
    known.push("unknown".to_owned());
    for (_, labels, _) in samples(&last) {
        if let Some(rest) = labels.split("action=\"").nth(1) {
            let action = rest.split('"').next().unwrap();
            assert!(
                action.starts_with("rpc.") || known.iter().any(|k| k == action),
                "action label {action} is no loaded action"
            );
        }
    }
    assert_eq!(
        sum(
            &last,
            "switchboard_api_calls_total",
            r#"method="publish",outcome="ok""#
        ),
        1000.0
    );
    assert_eq!(
        sum(
            &last,
            "switchboard_recoveries_total",
            r#"result="recovered""#
        ),
        1.0
    );
}

/// A pool call's latency in `/metrics` covers the whole call: calls that
/// end together and are answered from one look at the connection's inbox
/// (sharing one clock read) each count at least as long as the action ran.
#[tokio::test]
async fn a_pool_calls_recorded_latency_covers_the_action() {
    let server = with_admin().start();
    let scrape = || get(&server, "/metrics", Some(ADMIN)).1;
    let before = scrape();
    let mut ann = server.connect_as("ann").await;
    const CALLS: u64 = 4;
    const SLEEP_MS: u64 = 150;
    for id in 1..=CALLS {
        ann.send(&json!({"jsonrpc": "2.0", "id": id, "method": "echo/sleep", "params": {"ms": SLEEP_MS}}))
            .await;
    }
    for _ in 0..CALLS {
        let reply = ann.recv().await;
        assert_eq!(reply["result"], json!({"slept": SLEEP_MS}), "{reply}");
    }
    let after = scrape();
    let moved = |name: &str| {
        sum(&after, name, r#"action="echo/sleep""#) - sum(&before, name, r#"action="echo/sleep""#)
    };
    assert_eq!(
        moved("switchboard_call_duration_seconds_count"),
        CALLS as f64
    );
    let seconds = moved("switchboard_call_duration_seconds_sum");
    assert!(
        seconds >= (CALLS * SLEEP_MS) as f64 / 1000.0,
        "{CALLS} calls of {SLEEP_MS} ms recorded as {seconds} s in all"
    );
}

/// A user's connections share one message allowance; another user is
/// unaffected.
#[tokio::test]
async fn a_user_with_many_connections_gets_one_users_share() {
    let server = ServerConfig::default()
        .arg("--user-message-rate")
        .arg("1")
        .arg("--user-message-burst")
        .arg("10")
        .start();
    let mut first = server.connect_as("greedy").await;
    let mut second = server.connect_as("greedy").await;
    let mut polite = server.connect_as("polite").await;
    let mut outcomes = Vec::new();
    for i in 0..8 {
        outcomes.push(first.call("echo", json!([i])).await);
        outcomes.push(second.call("echo", json!([i])).await);
    }
    let refused: Vec<&Value> = outcomes
        .iter()
        .filter(|r| error_code(r) == Some(-32004))
        .collect();
    assert!(
        (5..=6).contains(&refused.len()),
        "16 messages against a shared burst of 10 (1 a second refills): {outcomes:?}"
    );
    assert!(
        refused[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("your user"),
        "{}",
        refused[0]
    );
    for i in 0..10 {
        let reply = polite.call("echo", json!([i])).await;
        assert_eq!(
            reply["result"],
            json!([i]),
            "another user is not limited: {reply}"
        );
    }
}

/// An action's own limit (`Action::rate_limit`) and the publish limit
/// refuse with -32004 before the action or the room; the refusals count
/// towards the close with 1008.
#[tokio::test]
async fn action_and_publish_limits_refuse_then_close() {
    let server = ServerConfig::default()
        .arg("--publish-rate")
        .arg("1")
        .arg("--publish-burst")
        .arg("3")
        .arg("--rate-refusals-before-close")
        .arg("20")
        .start();
    let mut client = server.connect_as("ann").await;
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..8 {
        let reply = client.call("echo/limited", json!([i])).await;
        match error_code(&reply) {
            None => ok += 1,
            Some(-32004) => {
                limited += 1;
                let message = reply["error"]["message"].as_str().unwrap();
                assert!(message.contains("echo/limited"), "{message}");
            }
            other => panic!("{other:?}: {reply}"),
        }
    }
    assert!((5..=6).contains(&ok), "a burst of 5: {ok} went through");
    assert_eq!(ok + limited, 8);
    // Another connection has its own allowance.
    let mut other = server.connect_as("bob").await;
    assert!(error_code(&other.call("echo/limited", json!([1])).await).is_none());

    client.call("rpc.join", json!({"room": "r"})).await;
    let mut published = 0;
    let mut refused = 0;
    for i in 0..6 {
        let reply = client
            .call("rpc.publish", json!({"room": "r", "data": i}))
            .await;
        match error_code(&reply) {
            None => published += 1,
            Some(-32004) => refused += 1,
            other => panic!("{other:?}: {reply}"),
        }
    }
    assert!((3..=4).contains(&published), "{published} published");
    assert_eq!(published + refused, 6);
    // Keep going: past 20 refusals in 10 s the connection is closed.
    let mut code = None;
    for i in 0..40 {
        if !client.try_request(i, "echo/limited", json!([i])).await {
            break;
        }
        if let Some(tokio_tungstenite::tungstenite::Message::Close(frame)) =
            client.next_message(Duration::from_millis(500)).await
        {
            code = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1008));
}
