//! Calls over a real WebSocket: replies, notifications, batches, every
//! error code the runtime produces, ordering, concurrency and limits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::Duration;
use switchboard_tests::{ServerConfig, error_code};

#[tokio::test]
async fn echo_returns_params_untouched() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    let params = json!({"text": "héllo \"quoted\"", "n": [1, 2.5, -3], "nested": {"deep": null}});
    let reply = c.call("echo", params.clone()).await;
    assert_eq!(reply["jsonrpc"], "2.0");
    assert_eq!(reply["result"], params);
    // The exact bytes are spliced through: formatting survives.
    c.send_text(r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":  1.50}}"#)
        .await;
    let raw = c
        .next_message(switchboard_tests::WAIT)
        .await
        .unwrap()
        .into_text()
        .unwrap();
    assert_eq!(
        raw.as_str(),
        r#"{"jsonrpc":"2.0","id":1,"result":{"a":  1.50}}"#
    );
}

#[tokio::test]
async fn ids_of_every_kind_come_back() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    for id in [json!(0), json!(-7), json!(1.5), json!("abc"), json!("")] {
        c.request(id.clone(), "rpc.ping", Value::Null).await;
        let reply = c.recv().await;
        assert_eq!(reply["id"], id);
        assert_eq!(reply["result"], "pong");
    }
}

#[tokio::test]
async fn notifications_run_but_get_no_reply() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    c.send(&json!({"jsonrpc": "2.0", "method": "kv/set", "params": {"key": "n1", "value": 42}}))
        .await;
    c.send(&json!({"jsonrpc": "2.0", "method": "echo/error", "params": {}}))
        .await;
    c.send(&json!({"jsonrpc": "2.0", "method": "no/such"}))
        .await;
    // The next frame is the reply to this call: the notifications sent none,
    // even the failing ones. The value proves the first one ran.
    let reply = c.call("kv/get", json!({"key": "n1"})).await;
    assert_eq!(reply["result"], 42);
}

#[tokio::test]
async fn batch_answers_every_call_in_one_array() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    c.send(&json!([
        {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"x": 1}},
        {"jsonrpc": "2.0", "method": "kv/set", "params": {"key": "b", "value": "v"}},
        {"jsonrpc": "2.0", "id": 2, "method": "rpc.ping"},
        {"jsonrpc": "2.0", "id": 3, "method": "no/such"},
        {"foo": "bar"},
        {"jsonrpc": "2.0", "id": 4, "method": "echo/sleep", "params": {"ms": 50}}
    ]))
    .await;
    let reply = c.recv().await;
    let items = reply.as_array().expect("a batch reply is an array");
    assert_eq!(items.len(), 5, "{reply}");
    // Listed in request order, even though the sleep finished last.
    let ids: Vec<&Value> = items.iter().map(|r| &r["id"]).collect();
    assert_eq!(
        ids,
        [&json!(1), &json!(2), &json!(3), &Value::Null, &json!(4)]
    );
    let by_id = |id: Value| {
        items
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(by_id(json!(1))["result"], json!({"x": 1}));
    assert_eq!(by_id(json!(2))["result"], "pong");
    assert_eq!(error_code(&by_id(json!(3))), Some(-32601));
    assert_eq!(error_code(&by_id(Value::Null)), Some(-32600));
    assert_eq!(by_id(json!(4))["result"], json!({"slept": 50}));
}

#[tokio::test]
async fn batch_edge_cases() {
    let server = ServerConfig::default().arg("--max-batch").arg("3").start();
    let mut c = server.connect().await;
    c.send_text("[]").await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), Some(-32600));
    assert_eq!(reply["id"], Value::Null);
    c.send_text("[1, 2]").await;
    let reply = c.recv().await;
    assert_eq!(reply.as_array().map(Vec::len), Some(2), "{reply}");
    assert!(
        reply
            .as_array()
            .unwrap()
            .iter()
            .all(|r| error_code(r) == Some(-32600))
    );
    c.send_text(r#"[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"rpc.ping"}]"#)
        .await;
    c.send_text(r#"[{"jsonrpc":"2.0","id":1,"method":"rpc.ping"},{"jsonrpc":"2.0","id":2,"method":"rpc.ping"},{"jsonrpc":"2.0","id":3,"method":"rpc.ping"},{"jsonrpc":"2.0","id":4,"method":"rpc.ping"}]"#).await;
    // The all-notification batch got nothing back: the next frame answers the oversized batch.
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), Some(-32600), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 3")
    );
    c.send_text(r#"[{"jsonrpc":"2.0","id":1,"method":"rpc.ping"}"#)
        .await;
    assert_eq!(error_code(&c.recv().await), Some(-32700));
}

#[tokio::test]
async fn malformed_frames_get_the_right_codes() {
    let server = ServerConfig::default().start();
    let mut c = server.connect().await;
    let cases: &[(&str, i64, Value)] = &[
        ("{not json", -32700, Value::Null),
        ("", -32700, Value::Null),
        ("42", -32600, Value::Null),
        (r#""text""#, -32600, Value::Null),
        (r#"{"id":1,"method":"echo"}"#, -32600, json!(1)),
        (
            r#"{"jsonrpc":"1.0","id":2,"method":"echo"}"#,
            -32600,
            json!(2),
        ),
        (r#"{"jsonrpc":"2.0","id":3}"#, -32600, json!(3)),
        (r#"{"jsonrpc":"2.0","id":4,"method":7}"#, -32600, json!(4)),
        (
            r#"{"jsonrpc":"2.0","id":5,"method":"echo","params":"scalar"}"#,
            -32600,
            json!(5),
        ),
        (
            r#"{"jsonrpc":"2.0","id":{"an":"object"},"method":"echo"}"#,
            -32600,
            Value::Null,
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"result":true}"#,
            -32600,
            json!(6),
        ),
    ];
    for (frame, code, id) in cases {
        c.send_text(frame).await;
        let reply = c.recv().await;
        assert_eq!(
            error_code(&reply),
            Some(*code),
            "frame {frame:?} got {reply}"
        );
        assert_eq!(&reply["id"], id, "frame {frame:?} got {reply}");
        assert!(
            !reply["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
        );
    }
    c.send_binary(b"{}".to_vec()).await;
    let reply = c.recv().await;
    assert_eq!(error_code(&reply), Some(-32600));
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("text frames")
    );
}

#[tokio::test]
async fn unknown_methods_and_action_errors() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    let reply = c.call("echo/nope", json!({})).await;
    assert_eq!(error_code(&reply), Some(-32601));
    assert_eq!(reply["error"]["message"], "no action 'echo/nope'");
    assert_eq!(
        error_code(&c.call("rpc.nope", Value::Null).await),
        Some(-32601)
    );

    let reply = c.call("echo/error", json!({"why": "testing"})).await;
    assert_eq!(reply["error"]["code"], 1000);
    assert_eq!(reply["error"]["data"], json!({"why": "testing"}));

    // An action may use -32602 and -32603 itself; any other reserved code
    // becomes -32603, so clients can trust the protocol's table.
    let reply = c
        .call("echo/fail", json!({"code": -32602, "message": "bad key"}))
        .await;
    assert_eq!(
        reply["error"],
        json!({"code": -32602, "message": "bad key"})
    );
    let reply = c
        .call("echo/fail", json!({"code": -32001, "message": "spoofed"}))
        .await;
    assert_eq!(error_code(&reply), Some(-32603), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reserved error code -32001")
    );
    let reply = c
        .call("echo/fail", json!({"code": 7, "message": "app error"}))
        .await;
    assert_eq!(reply["error"], json!({"code": 7, "message": "app error"}));

    let reply = c.call("echo/sleep", json!({"ms": "soon"})).await;
    assert_eq!(error_code(&reply), Some(-32602));
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid params"),
        "{reply}"
    );
    assert_eq!(
        error_code(&c.call("echo/sleep", Value::Null).await),
        Some(-32602)
    );

    let reply = c.call("kv/incr", json!({"key": "n", "by": 2})).await;
    assert_eq!(reply["result"], json!({"value": 2}));
    c.call("kv/set", json!({"key": "s", "value": "text"})).await;
    let reply = c.call("kv/incr", json!({"key": "s"})).await;
    assert_eq!(reply["error"]["code"], 1001);
    assert_eq!(reply["error"]["data"], "text");
}

#[tokio::test]
async fn typed_results_of_every_size_come_back_whole() {
    // A typed action's result is serialized on the plugin's stack while
    // it fits and moves to the heap when it outgrows it: sizes around
    // that edge (and far beyond), with escapes and multi-byte text, come
    // back exactly as stored.
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    // Each character takes 1.75 bytes on average as JSON: 250 to 310 of
    // them straddle 512 bytes one by one.
    for len in [0usize, 1, 1_000, 70_000].into_iter().chain(250..=310) {
        let text: String = "é\"\\x".chars().cycle().take(len).collect();
        let value = json!({"text": text, "n": len});
        let key = format!("size-{len}");
        let stored = c.call("kv/set", json!({"key": key, "value": value})).await;
        assert!(stored.get("error").is_none(), "{stored}");
        let reply = c.call("kv/get", json!({"key": key})).await;
        assert_eq!(reply["result"], value, "a result of {len} characters");
    }
}

#[tokio::test]
async fn a_panicking_action_fails_alone_and_the_server_carries_on() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    let mut other = server.connect().await;
    for _ in 0..3 {
        let reply = c.call("echo/panic", json!({})).await;
        assert_eq!(error_code(&reply), Some(-32005), "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("echo/panic was called"),
            "{reply}"
        );
        assert_eq!(c.call("echo", json!([1])).await["result"], json!([1]));
        assert_eq!(other.call("echo", json!([2])).await["result"], json!([2]));
    }
    server.wait_for_log("panic at actions/echo/src/lib.rs");
}

#[tokio::test]
async fn a_slow_call_does_not_delay_a_later_ping() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    c.request(1, "echo/sleep", json!({"ms": 500})).await;
    c.request(2, "rpc.ping", Value::Null).await;
    c.request(3, "echo", json!(["fast"])).await;
    let first = c.recv().await;
    let second = c.recv().await;
    let third = c.recv().await;
    assert_eq!(first["id"], 2, "the ping was answered first");
    assert_eq!(
        second["id"], 3,
        "the fast echo was answered before the sleep"
    );
    assert_eq!(third["id"], 1);
    assert_eq!(third["result"], json!({"slept": 500}));
}

/// More sleeping and spinning calls than the server has worker threads,
/// and yet another connection is served before any of them ends: actions
/// never hold a runtime worker.
#[tokio::test]
async fn blocking_actions_never_starve_other_connections() {
    let server = ServerConfig::default().start();
    let mut busy = Vec::new();
    for i in 0..6 {
        let mut c = server.connect_as("alice").await;
        let method = if i % 2 == 0 {
            "echo/sleep"
        } else {
            "echo/spin"
        };
        c.request(i, method, json!({"ms": 1500})).await;
        busy.push(c);
    }
    // Wait until all six are running in the server.
    let started = std::time::Instant::now();
    while server.status()["inflight_calls"] != 6 {
        assert!(
            started.elapsed() < switchboard_tests::WAIT,
            "{}",
            server.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut probe = server.connect().await;
    assert_eq!(
        probe.call("echo", json!(["still here"])).await["result"],
        json!(["still here"])
    );
    // All six were still running when the probe was answered.
    assert!(server.status()["inflight_calls"].as_u64().unwrap() >= 6);
    // Then every busy connection gets its answer.
    for c in &mut busy {
        let reply = c.recv().await;
        assert!(reply["result"].is_object(), "{reply}");
    }
}

#[tokio::test]
async fn deferred_replies_arrive_from_other_threads() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    c.request(1, "echo/later", json!({"ms": 300})).await;
    c.request(2, "echo/later", json!({"ms": 10})).await;
    assert_eq!(c.recv().await["id"], 2);
    assert_eq!(c.recv().await["result"], json!({"slept": 300}));
}

#[tokio::test]
async fn an_action_past_its_deadline_gets_a_timeout() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    // echo/sleep declares a 2 s deadline.
    let reply = c.call("echo/sleep", json!({"ms": 3000})).await;
    assert_eq!(error_code(&reply), Some(-32003), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2000 ms")
    );
    // The deferred kind too, and the connection keeps working.
    let reply = c.call("echo/later", json!({"ms": 2600})).await;
    assert_eq!(error_code(&reply), Some(-32003), "{reply}");
    assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    // Calls made while another runs are kept by the connection's sweep,
    // not a timer each (the first keeps its own): all time out alike.
    c.request(10, "echo/sleep", json!({"ms": 3000})).await;
    c.request(11, "echo/sleep", json!({"ms": 3000})).await;
    c.request(12, "echo/later", json!({"ms": 2600})).await;
    let mut ids = vec![];
    for _ in 0..3 {
        let reply = c.recv().await;
        assert_eq!(error_code(&reply), Some(-32003), "{reply}");
        ids.push(reply["id"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, [10, 11, 12]);
}

#[tokio::test]
async fn the_server_default_deadline_applies_to_actions_without_one() {
    let server = ServerConfig::default()
        .arg("--call-timeout-ms")
        .arg("300")
        .start();
    let mut c = server.connect_as("alice").await;
    // kv/* set no deadline of their own; a quick call still succeeds.
    assert_eq!(
        c.call("kv/incr", json!({"key": "k"})).await["result"],
        json!({"value": 1})
    );
    let status = server.status();
    let kv = status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "kv")
        .unwrap()
        .clone();
    assert!(
        kv["actions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["timeout_ms"] == 300),
        "{kv}"
    );
}

#[tokio::test]
async fn calls_past_the_connection_limit_are_shed() {
    let server = ServerConfig::default()
        .arg("--max-inflight-per-connection")
        .arg("2")
        .start();
    let mut c = server.connect_as("alice").await;
    c.request(1, "echo/sleep", json!({"ms": 400})).await;
    c.request(2, "echo/sleep", json!({"ms": 400})).await;
    c.request(3, "echo/sleep", json!({"ms": 400})).await;
    let shed = c.recv().await;
    assert_eq!(shed["id"], 3);
    assert_eq!(error_code(&shed), Some(-32006), "{shed}");
    // Built-ins are not limited, and once replies arrive calls flow again.
    assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    c.recv().await;
    c.recv().await;
    assert_eq!(c.call("echo", json!([1])).await["result"], json!([1]));
}

/// An inline action that answers later holds the connection's call slots
/// while its answer is awaited, so a client cannot keep unbounded calls
/// waiting on one; past the limit it is refused at once.
#[tokio::test]
async fn inline_calls_answered_later_count_against_the_connection_limit() {
    let probe = switchboard_tests::probe_variant("inflight", &[("PROBE_VERSION", "inflight")]);
    let server = ServerConfig::default()
        .plugins(&[])
        .plugin_file("libprobe.so", &probe)
        .arg("--max-inflight-per-connection")
        .arg("2")
        .start();
    let mut c = server.connect_as("alice").await;
    // The plugin's thread answers one call after another, 3 s each: the
    // first two still hold their slots when `/status` is read below.
    c.request(1, "probe/later-inline", json!({"ms": 3000}))
        .await;
    c.request(2, "probe/later-inline", json!({"ms": 3000}))
        .await;
    c.request(3, "probe/later-inline", json!({"ms": 3000}))
        .await;
    let shed = c.recv().await;
    assert_eq!(shed["id"], 3, "{shed}");
    assert_eq!(error_code(&shed), Some(-32006), "{shed}");
    let message = shed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("already has 2 calls running")
            && message.contains("'probe/later-inline' answers later"),
        "{message}"
    );
    assert_eq!(server.status()["inflight_calls"], 2);
    // The two held are answered, and give their slots back.
    for id in [1, 2] {
        let reply = c.recv().await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["result"], "later from inflight", "{reply}");
    }
    switchboard_tests::wait_until("the slots given back", || {
        server.status()["inflight_calls"] == 0
    });
    let reply = c.call("probe/later-inline", json!({})).await;
    assert_eq!(reply["result"], "later from inflight", "{reply}");
}

#[tokio::test]
async fn calls_past_the_server_limit_are_shed() {
    let server = ServerConfig::default()
        .arg("--max-inflight-calls")
        .arg("2")
        .start();
    let mut a = server.connect_as("alice").await;
    let mut b = server.connect_as("bob").await;
    // Long enough to be running whatever the machine's load; the check
    // waits for both to hold their slots rather than guessing a delay.
    a.request(1, "echo/sleep", json!({"ms": 1900})).await;
    a.request(2, "echo/sleep", json!({"ms": 1900})).await;
    switchboard_tests::wait_until("two calls running", || {
        server.status()["inflight_calls"] == 2
    });
    // (echo runs inline and takes no slot; a pool action is shed.)
    let reply = b.call("kv/get", json!({"key": "k"})).await;
    assert_eq!(error_code(&reply), Some(-32006), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 2")
    );
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let server = ServerConfig::default()
        .arg("--max-message-bytes")
        .arg("1024")
        .start();
    let mut c = server.connect().await;
    let big = "x".repeat(2000);
    c.request(1, "echo", json!([big])).await;
    assert_eq!(c.expect_close().await, 1009);
    // Others are unaffected.
    let mut d = server.connect().await;
    assert_eq!(
        d.call("echo", json!(["small"])).await["result"],
        json!(["small"])
    );
}

#[tokio::test]
async fn many_calls_in_flight_on_many_connections_all_get_their_own_reply() {
    let server = ServerConfig::default().start();
    let mut tasks = Vec::new();
    for conn in 0..20 {
        let url = server.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut c = switchboard_tests::Client::connect(&url).await;
            for i in 0..50 {
                c.request(i, "echo", json!({"conn": conn, "i": i})).await;
            }
            let mut seen = std::collections::HashSet::new();
            for _ in 0..50 {
                let reply = c.recv().await;
                let i = reply["id"].as_i64().unwrap();
                assert_eq!(reply["result"], json!({"conn": conn, "i": i}));
                assert!(seen.insert(i), "reply {i} arrived twice");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn rpc_actions_lists_what_the_caller_may_call() {
    let server = ServerConfig::default().start();
    let mut anon = server.connect().await;
    let listed = anon.call("rpc.actions", Value::Null).await["result"].clone();
    let paths: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec!["echo", "echo/count", "echo/limited", "echo/whoami"]
    );
    assert_eq!(listed[0]["version"], "0.1.0");
    assert_eq!(listed[0]["plugin"], "echo");

    let mut alice = server.connect_as("alice").await;
    let listed = alice.call("rpc.actions", Value::Null).await["result"].clone();
    let paths: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"kv/set") && paths.contains(&"echo/sleep"),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 15);
}

/// The action trait: `echo/count` is a type implementing `Handler`, with
/// its path and policy (public, inline) from the trait and its count in
/// `&self`.
#[tokio::test]
async fn an_action_may_be_a_type_that_keeps_its_own_state() {
    let server = ServerConfig::default().start();
    let mut anon = server.connect().await;
    for expected in 1..=3 {
        let reply = anon.call("echo/count", Value::Null).await;
        assert_eq!(reply["result"], expected, "{reply}");
    }
    let mut other = server.connect_as("bo").await;
    assert_eq!(other.call("echo/count", Value::Null).await["result"], 4);
    let reply = other.call("echo/count", json!({"unexpected": 1})).await;
    assert_eq!(error_code(&reply), Some(-32602), "{reply}");
    let listed = anon.call("rpc.actions", Value::Null).await["result"].clone();
    let count = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["path"] == "echo/count")
        .cloned()
        .unwrap_or_default();
    assert_eq!(count["public"], true, "{listed}");
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let mut server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    c.request(1, "echo/sleep", json!({"ms": 700})).await;
    let started = std::time::Instant::now();
    while server.status()["inflight_calls"] != 1 {
        assert!(started.elapsed() < switchboard_tests::WAIT);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal_term();
    // The call that was running is answered before the close.
    let reply = c.recv().await;
    assert_eq!(reply["result"], json!({"slept": 700}), "{reply}");
    assert_eq!(c.expect_close().await, 1001);
    drop(c);
    let status = server.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(server.log().contains("stopped"), "{}", server.log());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let server = ServerConfig::default()
        .arg("--write-timeout-ms")
        .arg("500")
        .start();
    let url = server.ws_url();
    // Pipeline large calls and never read a reply: the server's writes stall.
    let writer = tokio::spawn(async move {
        let mut c = switchboard_tests::Client::connect(&url).await;
        let big = "x".repeat(60_000);
        for i in 0..2_000 {
            if !c.try_request(i, "echo", json!([big])).await {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    while !server.log().contains("the client stopped reading") {
        assert!(
            started.elapsed() < switchboard_tests::WAIT,
            "{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.abort();
    // Everyone else is served throughout.
    let mut other = server.connect().await;
    assert_eq!(other.call("rpc.ping", Value::Null).await["result"], "pong");
}

/// A burst of frames that reaches the server in one read (read ahead and
/// handled a batch at a time) is handled as frames sent one by one are:
/// in order, each kind of frame as it would be alone.
#[tokio::test]
async fn a_burst_received_at_once_is_handled_in_order_frame_by_frame() {
    use tokio_tungstenite::tungstenite::Message;
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("alice").await;
    let long_id = "a-long-id-that-is-more-than-thirty-bytes-long";
    let call = |id: Value, method: &str, params: Value| {
        Message::text(
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
        )
    };
    let mut burst = Vec::new();
    for n in 0..60 {
        burst.push(match n {
            10 => Message::text(
                json!({"jsonrpc": "2.0", "method": "kv/set", "params": {"key": "burst", "value": 7}})
                    .to_string(),
            ),
            20 => Message::Binary(b"not text".to_vec().into()),
            25 => call(json!(n), "rpc.ping", Value::Null),
            30 => call(json!(long_id), "echo/sleep", json!({"ms": 0})),
            35 => call(json!(n), "kv/get", json!({"key": "burst"})),
            // Longer than a batch copies: it ends the batch, and is
            // handled after the frames before it.
            45 => call(json!(n), "echo", json!({"big": "y".repeat(5000)})),
            _ => call(json!(n), "echo", json!({"n": n})),
        });
    }
    c.send_burst(burst).await;
    // `kv/get` and `echo/sleep` run on the action pool: their replies may
    // come at any point. The rest are answered at once, in order.
    let mut ready = Vec::new();
    let (mut stored, mut slept) = (None, None);
    while ready.len() < 57 || stored.is_none() || slept.is_none() {
        let reply = c.recv().await;
        if reply["id"] == long_id {
            slept = Some(reply);
        } else if reply["id"] == 35 {
            stored = Some(reply);
        } else {
            ready.push(reply);
        }
    }
    // The binary frame's refusal comes in its place.
    let ids: Vec<Value> = ready.iter().map(|r| r["id"].clone()).collect();
    let mut expected: Vec<Value> = (0..60)
        .filter(|n| ![10, 20, 30, 35].contains(n))
        .map(|n| json!(n))
        .collect();
    expected.insert(19, Value::Null);
    assert_eq!(ids, expected);
    assert_eq!(error_code(&ready[19]), Some(-32600), "{}", ready[19]);
    let result = |id: u32| {
        let reply = ready.iter().find(|r| r["id"] == id);
        reply.map(|r| r["result"].clone()).unwrap_or_default()
    };
    assert_eq!(result(25), "pong");
    assert_eq!(result(45)["big"].as_str().map(str::len), Some(5000));
    assert_eq!(result(59), json!({"n": 59}));
    let stored = stored.unwrap_or_default();
    assert_eq!(
        stored["result"], 7,
        "the notification before it ran first: {stored}"
    );
    let slept = slept.unwrap_or_default();
    assert_eq!(slept["result"], json!({"slept": 0}), "{slept}");
}
