//! Rooms over real sockets: delivery to every member exactly once and in
//! order, leaving, policy refusals, recovery after a disconnect, presence
//! (with abrupt disconnects), and a slow consumer closed with 4008 while the
//! server's memory stays bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_tests::{Client, SECRET, ServerConfig, error_code, now, token_with};

fn config_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

fn is_message(v: &Value) -> bool {
    v["method"] == "rpc.message"
}

#[tokio::test]
async fn every_member_gets_every_message_once_and_in_order() {
    let server = ServerConfig::default().start();
    let mut members = Vec::new();
    for i in 0..8 {
        let mut c = server.connect_as(&format!("m{i}")).await;
        let joined = c.call("rpc.join", json!({"room": "lobby"})).await;
        assert_eq!(joined["result"]["room"], "lobby", "{joined}");
        members.push(c);
    }
    let mut publisher = server.connect_as("pub").await;
    publisher.call("rpc.join", json!({"room": "lobby"})).await;
    for i in 1..=50 {
        let reply = publisher
            .call("rpc.publish", json!({"room": "lobby", "data": {"n": i}}))
            .await;
        assert_eq!(reply["result"]["offset"], i, "{reply}");
    }
    for c in &mut members {
        let mut offsets = Vec::new();
        while offsets.len() < 50 {
            let (frame, _) = c.recv_until(is_message).await;
            assert_eq!(frame["params"]["room"], "lobby");
            assert_eq!(frame["params"]["data"]["n"], frame["params"]["offset"]);
            offsets.push(frame["params"]["offset"].as_u64().unwrap());
        }
        assert_eq!(offsets, (1..=50).collect::<Vec<u64>>());
    }
    // A ping after all that gets its answer with no message in between.
    for c in &mut members {
        let (frame, skipped) = {
            c.request("p", "rpc.ping", Value::Null).await;
            c.recv_until(|v| v["id"] == "p").await
        };
        assert_eq!(frame["result"], "pong");
        assert!(
            skipped.iter().all(|f| !is_message(f)),
            "a duplicate message: {skipped:?}"
        );
    }
}

#[tokio::test]
async fn leave_and_leave_all_stop_delivery() {
    let server = ServerConfig::default().start();
    let mut c = server.connect_as("lee").await;
    let mut p = server.connect_as("pub").await;
    for room in ["a", "b", "c"] {
        c.call("rpc.join", json!({"room": room})).await;
        p.call("rpc.join", json!({"room": room})).await;
    }
    assert_eq!(
        c.call("rpc.leave", json!({"room": "a"})).await["result"]["room"],
        "a"
    );
    assert_eq!(
        error_code(&c.call("rpc.leave", json!({"room": "a"})).await),
        Some(-32602)
    );
    p.call("rpc.publish", json!({"room": "a", "data": 1})).await;
    p.call("rpc.publish", json!({"room": "b", "data": 2})).await;
    let (frame, _) = c.recv_until(is_message).await;
    assert_eq!(
        frame["params"]["room"], "b",
        "a message from a room it left: {frame}"
    );
    let reply = c.call("rpc.leave_all", Value::Null).await;
    assert_eq!(reply["result"]["rooms"], json!(["b", "c"]));
    p.call("rpc.publish", json!({"room": "b", "data": 3})).await;
    p.call("rpc.publish", json!({"room": "c", "data": 4})).await;
    c.request("p", "rpc.ping", Value::Null).await;
    let (_, skipped) = c.recv_until(|v| v["id"] == "p").await;
    assert!(skipped.iter().all(|f| !is_message(f)), "{skipped:?}");
}

#[tokio::test]
async fn room_rules_refuse_joins_and_publishes() {
    let (_dir, config) = config_file(
        r#"
[[rooms]]
pattern = "vip:*"
join = "claim"

[[rooms]]
pattern = "news:*"
publish = false

[[rooms]]
pattern = "open:*"
join = "anyone"

[[rooms]]
pattern = "user:{sub}"
join = "signed_in"

[[rooms]]
pattern = "user:*"
join = "claim"
"#,
    );
    let server = ServerConfig::default().arg("--config").arg(&config).start();
    let mut anon = server.connect().await;
    let mut alice = server.connect_as("alice").await;
    let vip = token_with(
        SECRET,
        json!({"sub": "v", "exp": now() + 60, "rooms": ["vip:gold"]}),
    );
    let mut v = Client::connect(&format!("{}?token={vip}", server.ws_url())).await;

    assert_eq!(
        error_code(&anon.call("rpc.join", json!({"room": "lobby"})).await),
        Some(-32001)
    );
    assert!(anon.call("rpc.join", json!({"room": "open:hall"})).await["result"].is_object());
    let reply = alice.call("rpc.join", json!({"room": "vip:gold"})).await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rooms claim")
    );
    assert!(v.call("rpc.join", json!({"room": "vip:gold"})).await["result"].is_object());
    assert_eq!(
        error_code(&v.call("rpc.join", json!({"room": "vip:silver"})).await),
        Some(-32002)
    );
    // {sub}: alice may join her own room, not bob's.
    assert!(alice.call("rpc.join", json!({"room": "user:alice"})).await["result"].is_object());
    assert_eq!(
        error_code(&alice.call("rpc.join", json!({"room": "user:bob"})).await),
        Some(-32002)
    );
    // Clients may join news rooms but not publish there.
    assert!(alice.call("rpc.join", json!({"room": "news:today"})).await["result"].is_object());
    let reply = alice
        .call("rpc.publish", json!({"room": "news:today", "data": "spam"}))
        .await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    // Bad names and params.
    assert_eq!(
        error_code(&alice.call("rpc.join", json!({"room": ""})).await),
        Some(-32602)
    );
    assert_eq!(
        error_code(&alice.call("rpc.join", json!({"room": "a b"})).await),
        Some(-32602)
    );
    assert_eq!(
        error_code(&alice.call("rpc.publish", json!({"room": "x"})).await),
        Some(-32602)
    );
}

#[tokio::test]
async fn a_rejoin_with_since_replays_exactly_the_missed_messages() {
    let (_dir, config) = config_file("[[rooms]]\npattern = \"short:*\"\nhistory_size = 3\n");
    let server = ServerConfig::default().arg("--config").arg(&config).start();
    let mut p = server.connect_as("pub").await;
    p.call("rpc.join", json!({"room": "feed"})).await;
    p.call("rpc.join", json!({"room": "short:1"})).await;
    let mut c = server.connect_as("rec").await;
    let joined = c.call("rpc.join", json!({"room": "feed"})).await["result"].clone();
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    p.call("rpc.publish", json!({"room": "feed", "data": "seen"}))
        .await;
    let (seen, _) = c.recv_until(is_message).await;
    let last = seen["params"]["offset"].as_u64().unwrap();
    c.close().await;
    for i in 0..5 {
        p.call("rpc.publish", json!({"room": "feed", "data": i}))
            .await;
    }
    let mut again = server.connect_as("rec").await;
    again
        .request(
            "j",
            "rpc.join",
            json!({"room": "feed", "since": last, "epoch": epoch}),
        )
        .await;
    // The replayed messages come first (they were queued before the reply).
    let (reply, replayed) = again.recv_until(|v| v["id"] == "j").await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["offset"], last + 5);
    p.call("rpc.publish", json!({"room": "feed", "data": "live"}))
        .await;
    let mut got: Vec<Value> = replayed
        .iter()
        .filter(|f| is_message(f))
        .map(|m| m["params"]["data"].clone())
        .collect();
    while got.len() < 6 {
        let (m, _) = again.recv_until(is_message).await;
        got.push(m["params"]["data"].clone());
    }
    assert_eq!(
        got,
        vec![
            json!(0),
            json!(1),
            json!(2),
            json!(3),
            json!(4),
            json!("live")
        ]
    );

    // The wrong epoch, no epoch, or a gap past the history: not recovered, nothing replayed.
    let mut other = server.connect_as("rec2").await;
    for (params, what) in [
        (
            json!({"room": "feed", "since": last, "epoch": "not-the-epoch"}),
            "epoch",
        ),
        (json!({"room": "feed", "since": last}), "no epoch"),
    ] {
        let reply = other.call("rpc.join", params).await;
        assert_eq!(reply["result"]["recovered"], false, "{what}: {reply}");
    }
    let short = other.call("rpc.join", json!({"room": "short:1"})).await["result"].clone();
    let short_epoch = short["epoch"].as_str().unwrap().to_owned();
    for i in 0..6 {
        p.call("rpc.publish", json!({"room": "short:1", "data": i}))
            .await;
    }
    let mut late = server.connect_as("late").await;
    let reply = late
        .call(
            "rpc.join",
            json!({"room": "short:1", "since": 1, "epoch": short_epoch}),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], false, "only 3 kept: {reply}");
    late.request("p", "rpc.ping", Value::Null).await;
    let (_, skipped) = late.recv_until(|v| v["id"] == "p").await;
    assert!(
        skipped.iter().all(|f| !is_message(f)),
        "replayed despite the gap: {skipped:?}"
    );
    let reply = late
        .call(
            "rpc.join",
            json!({"room": "short:1", "since": 4, "epoch": short_epoch}),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
}

/// A client alone in a fresh room leaves; others come and publish; the
/// first rejoins with the offset and epoch it saw and gets exactly what it
/// missed: an emptied room keeps its epoch and offsets. It is forgotten
/// once its history's age bound has passed since it emptied.
#[tokio::test]
async fn a_room_left_empty_keeps_its_epoch_so_its_last_member_recovers() {
    let (_dir, config) = config_file(
        r#"
[[rooms]]
pattern = "brief:*"
history_ttl_secs = 1
"#,
    );
    let server = ServerConfig::default().arg("--config").arg(&config).start();
    let mut first = server.connect_as("first").await;
    let joined = first.call("rpc.join", json!({"room": "fresh"})).await["result"].clone();
    assert_eq!(joined["offset"], 0, "{joined}");
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    first.close().await;
    switchboard_tests::wait_until("the first connection to close", || {
        server.status()["connections"] == 0
    });
    let mut second = server.connect_as("second").await;
    let joined = second.call("rpc.join", json!({"room": "fresh"})).await;
    assert_eq!(joined["result"]["epoch"], epoch.as_str(), "{joined}");
    for data in ["one", "two"] {
        let reply = second
            .call("rpc.publish", json!({"room": "fresh", "data": data}))
            .await;
        assert!(reply["result"]["offset"].is_u64(), "{reply}");
    }
    let mut back = server.connect_as("first").await;
    back.request(
        "j",
        "rpc.join",
        json!({"room": "fresh", "since": 0, "epoch": epoch}),
    )
    .await;
    let (reply, replayed) = back.recv_until(|v| v["id"] == "j").await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    let data: Vec<Value> = replayed
        .iter()
        .filter(|f| is_message(f))
        .map(|m| m["params"]["data"].clone())
        .collect();
    assert_eq!(data, vec![json!("one"), json!("two")]);

    // Bounded: an emptied room with nothing left in its history goes
    // once its history's age bound (here 1 s) has passed; the sweep
    // runs every 5 s.
    let rooms_open = || server.status()["bounds"]["rooms"]["open"].as_u64().unwrap();
    let before = rooms_open();
    back.call("rpc.join", json!({"room": "brief:1"})).await;
    assert_eq!(rooms_open(), before + 1);
    back.call("rpc.leave", json!({"room": "brief:1"})).await;
    assert_eq!(rooms_open(), before + 1, "kept for a rejoin");
    switchboard_tests::wait_until("the emptied room to be forgotten", || {
        rooms_open() == before
    });
}

#[tokio::test]
async fn presence_follows_joins_leaves_and_abrupt_disconnects() {
    let server = ServerConfig::default().start();
    let mut a = server.connect_as("ann").await;
    a.call("rpc.join", json!({"room": "p"})).await;
    let mut b = server.connect_as("ben").await;
    let b_conn = b.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    b.call("rpc.join", json!({"room": "p"})).await;
    let (event, _) = a.recv_until(|v| v["method"] == "rpc.event").await;
    assert_eq!(event["params"]["event"], "presence.join");
    assert_eq!(event["params"]["data"]["user"], "ben");
    let members = a.call("rpc.presence", json!({"room": "p"})).await["result"]["members"].clone();
    let users: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ann", "ben"]);
    // An abrupt disconnect (no close frame) still leaves the room.
    drop(b);
    let (event, _) = a.recv_until(|v| v["method"] == "rpc.event").await;
    assert_eq!(event["params"]["event"], "presence.leave");
    assert_eq!(event["params"]["data"]["conn"], b_conn);
    let members = a.call("rpc.presence", json!({"room": "p"})).await["result"]["members"].clone();
    assert_eq!(members.as_array().unwrap().len(), 1, "{members}");
}

#[tokio::test]
async fn a_consumer_that_does_not_read_is_closed_with_4008_and_memory_stays_bounded() {
    // The publisher floods on purpose: past one client's publish allowance.
    let server = ServerConfig::default()
        .arg("--publish-rate")
        .arg("0")
        .start();
    // A client that joins and then never reads.
    let url = format!(
        "{}?token={}",
        server.ws_url(),
        switchboard_tests::token("sloth", 300)
    );
    let (mut raw, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::SinkExt;
    raw.send(tokio_tungstenite::tungstenite::Message::text(
        json!({"jsonrpc": "2.0", "id": 1, "method": "rpc.join", "params": {"room": "firehose"}})
            .to_string(),
    ))
    .await
    .unwrap();
    let mut p = server.connect_as("pub").await;
    p.call("rpc.join", json!({"room": "firehose"})).await;
    let mut fast = server.connect_as("fast").await;
    fast.call("rpc.join", json!({"room": "firehose"})).await;
    let before = server.rss_kib();
    let big = "x".repeat(16 * 1024);
    let mut published = 0;
    while server.status()["slow_consumers_closed"] == 0 {
        for _ in 0..100 {
            p.call("rpc.publish", json!({"room": "firehose", "data": big}))
                .await;
            published += 1;
        }
        // The reading member keeps up.
        while let Some(m) = fast.next_message(std::time::Duration::from_millis(1)).await {
            drop(m);
        }
        assert!(published < 50_000, "never closed as a slow consumer");
    }
    let after = server.rss_kib();
    // Its queue was bounded: RSS did not grow with what was published
    // (published * 16 KiB would be hundreds of MiB).
    let grown = after.saturating_sub(before);
    assert!(
        grown < 96 * 1024,
        "RSS grew by {grown} KiB after {published} messages of 16 KiB"
    );
    // Its connection was closed with 4008.
    use futures_util::StreamExt;
    let mut code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(switchboard_tests::WAIT, raw.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Close(Some(frame)) = msg {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(4008));
    assert_eq!(fast.call("rpc.ping", Value::Null).await["result"], "pong");
}

#[tokio::test]
async fn private_rooms_limits_and_membership_rules() {
    let (_dir, config) =
        config_file("max_rooms_per_connection = 2\n\n[[rooms]]\npattern = \"user:{sub}\"\n");
    let server = ServerConfig::default().arg("--config").arg(&config).start();
    let mut alice = server.connect_as("alice").await;
    let mut bob = server.connect_as("bob").await;
    // A {sub} room belongs to its user, with no catch-all rule needed.
    assert!(alice.call("rpc.join", json!({"room": "user:alice"})).await["result"].is_object());
    let reply = bob.call("rpc.join", json!({"room": "user:alice"})).await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert_eq!(
        error_code(
            &bob.call("rpc.presence", json!({"room": "user:alice"}))
                .await
        ),
        Some(-32002)
    );
    // Publishing needs membership.
    let reply = bob
        .call("rpc.publish", json!({"room": "lobby", "data": 1}))
        .await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    // At most two rooms per connection.
    bob.call("rpc.join", json!({"room": "one"})).await;
    bob.call("rpc.join", json!({"room": "two"})).await;
    assert_eq!(
        error_code(&bob.call("rpc.join", json!({"room": "three"})).await),
        Some(-32006)
    );
    assert!(
        bob.call("rpc.join", json!({"room": "two"})).await["result"].is_object(),
        "rejoining is not a new room"
    );
    // A user who signs in with rpc.auth shows by name in presence.
    let mut late = server.connect().await;
    late.call(
        "rpc.auth",
        json!({"token": switchboard_tests::token("carol", 60)}),
    )
    .await;
    late.call("rpc.join", json!({"room": "one"})).await;
    let members =
        bob.call("rpc.presence", json!({"room": "one"})).await["result"]["members"].clone();
    let users: Vec<&str> = members
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["user"].as_str())
        .collect();
    assert_eq!(users, ["bob", "carol"], "{members}");
}
