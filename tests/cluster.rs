//! Cluster mode over real sockets: three real `switchboard` nodes sharing
//! one real `redis-server` (started by the test on a free port, with no
//! persistence), and real clients connected to different nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use switchboard_tests::redis::Redis;
use switchboard_tests::{Client, SECRET, Server, ServerConfig, WAIT, error_code, now, token_with};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A node of the cluster on `redis`, with the chat plugin (pushes to
/// users and everyone) and echo.
fn node(redis: &Redis, name: &str, extra: &[&str]) -> Server {
    let mut config = ServerConfig::default()
        .plugins(&["echo", "chat", "auth_probe"])
        .arg("--redis-url")
        .arg(&redis.url())
        .arg("--node-id")
        .arg(name);
    for arg in extra {
        config = config.arg(arg);
    }
    config.start()
}

fn is_message(v: &Value) -> bool {
    v["method"] == "rpc.message"
}

/// Reads `count` room messages from `client`, in the order they came.
async fn messages(client: &mut Client, count: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < count {
        let (message, _) = client.recv_until(is_message).await;
        got.push(message["params"].clone());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_on_any_node_reach_every_member_once_and_in_order() {
    let redis = Redis::start();
    let nodes = [
        node(&redis, "a", &[]),
        node(&redis, "b", &[]),
        node(&redis, "c", &[]),
    ];
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..2 {
            let mut member = node.connect_as(&format!("m{i}{j}")).await;
            let joined = member.call("rpc.join", json!({"room": "lobby"})).await;
            assert_eq!(joined["result"]["room"], "lobby", "{joined}");
            members.push(member);
        }
    }
    // Two publishers on two nodes at once, 40 messages each.
    let per_publisher = 40;
    let mut publishers = Vec::new();
    for (name, node) in [("pa", &nodes[0]), ("pb", &nodes[1])] {
        let mut publisher = node.connect_as(name).await;
        publisher.call("rpc.join", json!({"room": "lobby"})).await;
        publishers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..per_publisher {
                let reply = publisher
                    .call(
                        "rpc.publish",
                        json!({"room": "lobby", "data": {"from": name, "n": i}}),
                    )
                    .await;
                offsets.push(reply["result"]["offset"].as_u64().unwrap());
            }
            offsets
        }));
    }
    let mut all_offsets = Vec::new();
    for publisher in publishers {
        all_offsets.extend(publisher.await.unwrap());
    }
    all_offsets.sort_unstable();
    let total = 2 * per_publisher;
    assert_eq!(
        all_offsets,
        (1..=total as u64).collect::<Vec<_>>(),
        "offsets are gap-free across nodes"
    );
    for member in &mut members {
        let got = messages(member, total).await;
        let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
        // Each publisher's messages in the order it sent them.
        let mut next: HashMap<String, u64> = HashMap::new();
        for message in &got {
            let from = message["data"]["from"].as_str().unwrap().to_owned();
            let n = message["data"]["n"].as_u64().unwrap();
            let expected = next.entry(from).or_default();
            assert_eq!(n, *expected, "{message}");
            *expected += 1;
        }
        // And nothing more (no message twice).
        member.request("p", "rpc.ping", Value::Null).await;
        let (_, extra) = member.recv_until(|v| v["id"] == "p").await;
        assert!(extra.iter().all(|f| !is_message(f)), "{extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recovers_on_another_node_exactly_or_is_told_it_cannot() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let c = node(&redis, "c", &[]);
    let mut reader = a.connect_as("reader").await;
    let joined = reader.call("rpc.join", json!({"room": "feed"})).await["result"].clone();
    let epoch = joined["epoch"].as_str().unwrap().to_owned();
    let mut writer = b.connect_as("writer").await;
    writer.call("rpc.join", json!({"room": "feed"})).await;
    writer
        .call("rpc.publish", json!({"room": "feed", "data": "seen"}))
        .await;
    let seen = messages(&mut reader, 1).await;
    let last = seen[0]["offset"].as_u64().unwrap();
    reader.close().await;
    for i in 0..3 {
        writer
            .call("rpc.publish", json!({"room": "feed", "data": i}))
            .await;
    }
    // Back, on another node.
    let mut back = c.connect_as("reader").await;
    back.request(
        "j",
        "rpc.join",
        json!({"room": "feed", "since": last, "epoch": epoch}),
    )
    .await;
    let (reply, before) = back.recv_until(|v| v["id"] == "j").await;
    assert_eq!(reply["result"]["recovered"], true, "{reply}");
    assert_eq!(reply["result"]["epoch"], epoch.as_str());
    let replayed: Vec<Value> = before
        .iter()
        .filter(|f| is_message(f))
        .map(|m| m["params"]["data"].clone())
        .collect();
    assert_eq!(replayed, vec![json!(0), json!(1), json!(2)]);
    // Live messages follow the replay, once.
    writer
        .call("rpc.publish", json!({"room": "feed", "data": "live"}))
        .await;
    let live = messages(&mut back, 1).await;
    assert_eq!(live[0]["data"], "live");
    assert_eq!(live[0]["offset"], last + 4);

    // Another epoch, or a gap older than the history: not recovered, and
    // nothing replayed.
    let mut other = c.connect_as("other").await;
    let reply = other
        .call(
            "rpc.join",
            json!({"room": "feed", "since": last, "epoch": "not-the-epoch"}),
        )
        .await;
    assert_eq!(reply["result"]["recovered"], false, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_nodes_and_a_killed_node_leaves_no_ghosts() {
    let redis = Redis::start();
    let a = node(&redis, "a", &["--node-timeout-secs", "2"]);
    let mut b = node(&redis, "b", &["--node-timeout-secs", "2"]);
    let c = node(&redis, "c", &["--node-timeout-secs", "2"]);
    let mut ann = a.connect_as("ann").await;
    let ann_conn = ann.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    ann.call("rpc.join", json!({"room": "team"})).await;
    let mut bob = b.connect_as("bob").await;
    let bob_conn = bob.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    assert_ne!(ann_conn, bob_conn, "connection ids are unique across nodes");
    bob.call("rpc.join", json!({"room": "team"})).await;
    // Ann, on another node, hears Bob arrive.
    let (event, _) = ann
        .recv_until(|v| v["params"]["event"] == "presence.join")
        .await;
    assert_eq!(event["params"]["data"]["user"], "bob", "{event}");
    assert_eq!(event["params"]["data"]["conn"], bob_conn);
    // A third node sees both (presence is public to members only: join).
    let mut cat = c.connect_as("cat").await;
    cat.call("rpc.join", json!({"room": "team"})).await;
    let members = cat.call("rpc.presence", json!({"room": "team"})).await;
    let users: Vec<&str> = members["result"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 3, "{members}");
    for user in ["ann", "bob", "cat"] {
        assert!(users.contains(&user), "{members}");
    }

    // Node b is killed: no goodbye. Once its timeout passes, Bob leaves
    // (one presence.leave) and presence no longer lists him.
    let killed = Instant::now();
    b.kill();
    let (event, _) = ann
        .recv_until(|v| v["params"]["event"] == "presence.leave")
        .await;
    assert_eq!(event["params"]["data"]["user"], "bob", "{event}");
    assert_eq!(event["params"]["data"]["conn"], bob_conn);
    println!(
        "a killed node's member left {} ms after the kill (node_timeout 2 s)",
        killed.elapsed().as_millis()
    );
    let members = ann.call("rpc.presence", json!({"room": "team"})).await;
    let conns: Vec<u64> = members["result"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["conn"].as_u64().unwrap())
        .collect();
    assert!(!conns.contains(&bob_conn), "{members}");
    assert_eq!(conns.len(), 2, "{members}");
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_a_users_connections_and_everyone_on_every_node() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let c = node(&redis, "c", &[]);
    let mut alice_a = a.connect_as("alice").await;
    let mut alice_b = b.connect_as("alice").await;
    let mut carol = c.connect_as("carol").await;
    // Each node has heard of nothing yet: the pushes go through Redis.
    let reply = carol
        .call("chat/dm", json!({"to": "alice", "text": "hi"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    for alice in [&mut alice_a, &mut alice_b] {
        let (dm, _) = alice
            .recv_until(|v| v["params"]["event"] == "chat.dm")
            .await;
        assert_eq!(dm["params"]["data"]["text"], "hi", "{dm}");
    }
    let reply = alice_a
        .call("chat/announce", json!({"text": "hello all"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    for client in [&mut alice_b, &mut carol] {
        let (push, _) = client
            .recv_until(|v| v["params"]["event"] == "chat.announcement")
            .await;
        assert_eq!(push["params"]["data"]["text"], "hello all", "{push}");
    }
    // Not back to the announcer itself.
    alice_a.request("p", "rpc.ping", Value::Null).await;
    let (_, before) = alice_a.recv_until(|v| v["id"] == "p").await;
    assert!(
        before
            .iter()
            .all(|f| f["params"]["event"] != "chat.announcement"),
        "{before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_nodes_serve_and_publishes_fail_clearly_then_resume() {
    let mut redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut reader = a.connect_as("reader").await;
    reader.call("rpc.join", json!({"room": "news"})).await;
    let mut writer = b.connect_as("writer").await;
    writer.call("rpc.join", json!({"room": "news"})).await;
    writer
        .call("rpc.publish", json!({"room": "news", "data": "before"}))
        .await;
    assert_eq!(messages(&mut reader, 1).await[0]["data"], "before");

    redis.kill();
    // Actions and local traffic go on.
    assert_eq!(writer.call("rpc.ping", Value::Null).await["result"], "pong");
    assert_eq!(
        writer.call("echo", json!({"still": "here"})).await["result"]["still"],
        "here"
    );
    // A publish answers a clear error, never a success nobody got.
    let reply = writer
        .call("rpc.publish", json!({"room": "news", "data": "lost"}))
        .await;
    assert_eq!(error_code(&reply), Some(-32006), "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the cluster's Redis") && message.contains("retry"),
        "{message}"
    );
    let status = b.status();
    assert_eq!(status["cluster"]["node"], "b", "{status}");
    assert!(status["cluster"]["last_error"].is_string(), "{status}");

    // Redis comes back (empty: no persistence). The nodes reconnect and
    // resubscribe; publishing works again and reaches the other node once.
    redis.restart();
    let start = Instant::now();
    loop {
        let reply = writer
            .call("rpc.publish", json!({"room": "news", "data": "after"}))
            .await;
        if reply.get("result").is_some() {
            break;
        }
        assert!(start.elapsed() < WAIT, "publishes never resumed: {reply}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    while a.status()["cluster"]["connected"] != true || b.status()["cluster"]["connected"] != true {
        assert!(start.elapsed() < WAIT, "the nodes did not resubscribe");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once resubscribed, a message reaches the reader exactly once. (The
    // room's history was lost with Redis: a new epoch; the reader was
    // told of the gap or gets the new epoch's messages.)
    writer
        .call("rpc.publish", json!({"room": "news", "data": "resumed"}))
        .await;
    let (message, _) = reader
        .recv_until(|v| is_message(v) && v["params"]["data"] == "resumed")
        .await;
    assert!(message["params"]["offset"].is_u64(), "{message}");
    reader.request("p", "rpc.ping", Value::Null).await;
    let (_, extra) = reader.recv_until(|v| v["id"] == "p").await;
    assert!(
        extra
            .iter()
            .all(|f| !(is_message(f) && f["params"]["data"] == "resumed")),
        "delivered twice: {extra:?}"
    );
    assert!(b.status()["cluster"]["reconnects"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_token_opens_one_connection_in_the_whole_cluster() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let once = token_with(
        SECRET,
        json!({"sub": "once", "exp": now() + 60, "jti": "cluster-jti-1"}),
    );
    let mut first = Client::connect(&format!("{}?token={once}", a.ws_url())).await;
    assert_eq!(
        first.call("echo/whoami", Value::Null).await["result"]["user"],
        "once"
    );
    // The same token on another node: refused (HTTP 401 on the upgrade).
    let again = Client::try_connect(
        format!("{}?token={once}", b.ws_url())
            .into_client_request()
            .unwrap(),
    )
    .await;
    assert!(
        matches!(&again, Err(WsError::Http(r)) if r.status() == 401),
        "{again:?}"
    );
    // And through rpc.auth on a third connection.
    let mut anon = b.connect().await;
    let reply = anon.call("rpc.auth", json!({"token": once})).await;
    assert_eq!(error_code(&reply), Some(-32001), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already been used"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_limits_hold_across_nodes() {
    let redis = Redis::start();
    let (_dir, config) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(
            &path,
            "[[rooms]]\npattern = \"small:*\"\nmax_members = 2\n\n[[rooms]]\npattern = \"inbox:{sub}\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    };
    let a = node(&redis, "a", &["--config", &config]);
    let b = node(&redis, "b", &["--config", &config]);
    let mut one = a.connect_as("one").await;
    let mut two = b.connect_as("two").await;
    let mut three = a.connect_as("three").await;
    for member in [&mut one, &mut two] {
        let reply = member.call("rpc.join", json!({"room": "small:1"})).await;
        assert_eq!(reply["result"]["room"], "small:1", "{reply}");
    }
    // Full, though this node has only one of its members.
    let reply = three.call("rpc.join", json!({"room": "small:1"})).await;
    assert_eq!(error_code(&reply), Some(-32006), "{reply}");
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("full"),
        "{reply}"
    );
    // A place frees up on the other node: the join goes through.
    two.call("rpc.leave", json!({"room": "small:1"})).await;
    let reply = three.call("rpc.join", json!({"room": "small:1"})).await;
    assert_eq!(reply["result"]["room"], "small:1", "{reply}");
    // A user's own room is theirs on every node.
    let reply = two.call("rpc.join", json!({"room": "inbox:one"})).await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
}

/// What a plugin does to a connection works whichever node holds it: its
/// info and data (chat/whois), and a call to the client and its answer
/// (chat/ask calls chat/confirm on the other node's client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_reach_connections_held_by_other_nodes() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut ann = a.connect_as("ann").await;
    let ann_conn = ann.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    let reply = ann.call("chat/join", json!({"room": "x"})).await;
    assert!(reply.get("result").is_some(), "{reply}\n{}", a.log());
    ann.call("chat/nick", json!({"nick": "Ann A."})).await;
    let mut bob = b.connect_as("bob").await;
    let reply = bob.call("chat/join", json!({"room": "x"})).await;
    assert!(reply.get("result").is_some(), "{reply}");

    // A push to Ann's connection from a plugin on Bob's node.
    let sent = bob
        .call(
            "probe/send",
            json!({"conn": ann_conn, "event": "poke", "data": {"from": "bob"}}),
        )
        .await;
    assert_eq!(sent["result"], true, "{sent}");
    let (poke, _) = ann.recv_until(|v| v["params"]["event"] == "poke").await;
    assert_eq!(poke["params"]["data"]["from"], "bob", "{poke}");

    let whois = bob.call("chat/whois", json!({"conn": ann_conn})).await;
    assert_eq!(
        whois["result"],
        json!({"conn": ann_conn, "user": "ann", "nick": "Ann A.", "rooms": ["chat:x"]}),
        "{whois}"
    );

    // Bob asks Ann's client (on node a) a question; Ann answers.
    bob.request(
        "ask",
        "chat/ask",
        json!({"conn": ann_conn, "question": "ready?", "timeout_ms": 5000}),
    )
    .await;
    let (call, _) = ann.recv_until(|v| v["method"] == "chat/confirm").await;
    assert_eq!(call["params"]["question"], "ready?", "{call}");
    let id = call["id"].clone();
    ann.send(&json!({"jsonrpc": "2.0", "id": id, "result": "yes"}))
        .await;
    let (answer, _) = bob.recv_until(|v| v["id"] == "ask").await;
    assert_eq!(answer["result"]["answer"], "yes", "{answer}");

    // A connection that is gone: refused as for one that never was.
    ann.close().await;
    let start = Instant::now();
    loop {
        let whois = bob.call("chat/whois", json!({"conn": ann_conn})).await;
        if error_code(&whois) == Some(2002) {
            break;
        }
        assert!(start.elapsed() < WAIT, "{whois}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_creates_only_so_many_rooms_a_minute_in_the_cluster() {
    let redis = Redis::start();
    let a = node(&redis, "a", &["--max-room-creations-per-minute", "2"]);
    let b = node(&redis, "b", &[]);
    let mut other = b.connect_as("other").await;
    let reply = other.call("rpc.join", json!({"room": "existing"})).await;
    assert_eq!(reply["result"]["room"], "existing", "{reply}");
    let mut flood = a.connect_as("flood").await;
    for room in ["new-1", "new-2"] {
        let reply = flood.call("rpc.join", json!({"room": room})).await;
        assert_eq!(reply["result"]["room"], room, "{reply}");
    }
    let reply = flood.call("rpc.join", json!({"room": "new-3"})).await;
    assert_eq!(error_code(&reply), Some(-32004), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_room_creations_per_minute"),
        "{reply}"
    );
    // A room another node's client made is not a creation.
    let reply = flood.call("rpc.join", json!({"room": "existing"})).await;
    assert_eq!(reply["result"]["room"], "existing", "{reply}");
}

/// Redis killed and restarted (empty) while a publisher on one node keeps
/// publishing to a reader on another: every publish either answers a clear
/// error or is acknowledged; every acknowledged message reaches the reader
/// exactly once, or the reader is told of the gap (`room.gap`); nothing
/// is delivered twice, and offsets only go up within an epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_mid_traffic_loses_nothing_silently_and_doubles_nothing() {
    let mut redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let b = node(&redis, "b", &[]);
    let mut reader = a.connect_as("reader").await;
    reader.call("rpc.join", json!({"room": "stream"})).await;
    let mut publisher = b.connect_as("publisher").await;
    publisher.call("rpc.join", json!({"room": "stream"})).await;
    let publishing = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut refused = 0;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            let reply = publisher
                .call("rpc.publish", json!({"room": "stream", "data": n}))
                .await;
            if reply.get("result").is_some() {
                acknowledged.push(n);
            } else {
                assert_eq!(error_code(&reply), Some(-32006), "{reply}");
                refused += 1;
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acknowledged, refused, publisher)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    let (acknowledged, refused, mut publisher) = publishing.await.unwrap();
    assert!(
        refused > 0,
        "Redis was down for 800 ms: some publishes must fail"
    );
    // Once both nodes are back, an end marker goes through.
    let start = Instant::now();
    while a.status()["cluster"]["connected"] != true || b.status()["cluster"]["connected"] != true {
        assert!(start.elapsed() < WAIT, "the nodes did not resubscribe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = publisher
        .call("rpc.publish", json!({"room": "stream", "data": "end"}))
        .await;
    assert!(reply.get("result").is_some(), "{reply}");
    let mut got: Vec<Value> = Vec::new();
    let mut offsets: Vec<u64> = Vec::new();
    let mut gaps = 0;
    loop {
        let (frame, _) = reader
            .recv_until(|v| is_message(v) || v["params"]["event"] == "room.gap")
            .await;
        if frame["params"]["event"] == "room.gap" {
            gaps += 1;
            offsets.clear();
            continue;
        }
        let offset = frame["params"]["offset"].as_u64().unwrap();
        if let Some(last) = offsets.last() {
            // A new epoch starts again from 1 (Redis lost the room).
            assert!(offset > *last || offset == 1, "{offset} after {last}");
            if offset == 1 {
                offsets.clear();
            }
        }
        offsets.push(offset);
        if frame["params"]["data"] == "end" {
            break;
        }
        got.push(frame["params"]["data"].clone());
    }
    let mut seen = std::collections::HashSet::new();
    for data in &got {
        assert!(
            seen.insert(data.as_u64().unwrap()),
            "{data} delivered twice"
        );
    }
    let missing: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(
        missing.is_empty() || gaps > 0,
        "acknowledged but never delivered, and no room.gap: {missing:?}"
    );
    println!(
        "{} acknowledged, {refused} refused while Redis was down, {} delivered, {} missed with {gaps} room.gap",
        acknowledged.len(),
        got.len(),
        missing.len()
    );
}

/// Redis that stops answering (DEBUG SLEEP): a publish fails within the
/// bounded wait, and the node answers everything else meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_bounds_the_wait_and_blocks_nothing_else() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let mut client = a.connect_as("client").await;
    client.call("rpc.join", json!({"room": "slow"})).await;
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let redis = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut redis = redis;
        use std::io::{Read, Write};
        redis.write_all(b"DEBUG SLEEP 4\r\n").unwrap();
        let mut answer = [0u8; 5];
        let _ = redis.read(&mut answer);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    client
        .request(
            "slow",
            "rpc.publish",
            json!({"room": "slow", "data": "waits"}),
        )
        .await;
    // Meanwhile the node answers.
    assert_eq!(client.call("rpc.ping", Value::Null).await["result"], "pong");
    assert!(started.elapsed() < Duration::from_secs(1));
    let (reply, _) = client.recv_until(|v| v["id"] == "slow").await;
    let waited = started.elapsed();
    assert_eq!(error_code(&reply), Some(-32006), "{reply}");
    assert!(
        waited < Duration::from_millis(3_800),
        "the publish waited {waited:?}, past the bound"
    );
    println!(
        "a publish to a stalled Redis failed after {} ms",
        waited.as_millis()
    );
    sleeper.join().unwrap();
}

/// Publishes sent back to back, without waiting for replies, keep their
/// order: a connection's room calls run one at a time, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_pipelined_publishes_keep_their_order() {
    let redis = Redis::start();
    let a = node(&redis, "a", &[]);
    let mut client = a.connect_as("client").await;
    client.call("rpc.join", json!({"room": "order"})).await;
    for i in 0..30 {
        client
            .request(
                format!("p{i}"),
                "rpc.publish",
                json!({"room": "order", "data": i}),
            )
            .await;
    }
    let mut offsets = HashMap::new();
    let mut data = Vec::new();
    while offsets.len() < 30 || data.len() < 30 {
        let frame = client.recv().await;
        if let Some(id) = frame["id"].as_str() {
            offsets.insert(id.to_owned(), frame["result"]["offset"].as_u64().unwrap());
        } else if is_message(&frame) {
            data.push(frame["params"]["data"].as_u64().unwrap());
        }
    }
    for i in 0..30u64 {
        assert_eq!(offsets[&format!("p{i}")], i + 1, "{offsets:?}");
    }
    assert_eq!(data, (0..30).collect::<Vec<u64>>());
}

/// `max_rooms` bounds the rooms of the whole cluster, whichever node makes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rooms_bounds_the_whole_cluster() {
    let redis = Redis::start();
    let a = node(&redis, "a", &["--max-rooms", "3"]);
    let b = node(&redis, "b", &["--max-rooms", "3"]);
    let mut ann = a.connect_as("ann").await;
    let mut bob = b.connect_as("bob").await;
    for (on_a, room) in [(true, "r1"), (false, "r2"), (true, "r3")] {
        let client = if on_a { &mut ann } else { &mut bob };
        let reply = client.call("rpc.join", json!({"room": room})).await;
        assert_eq!(reply["result"]["room"], room, "{reply}");
    }
    let reply = bob.call("rpc.join", json!({"room": "r4"})).await;
    assert_eq!(error_code(&reply), Some(-32006), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the cluster holds its maximum of 3 rooms"),
        "{reply}"
    );
    // Existing rooms may still be joined, from any node.
    let reply = bob.call("rpc.join", json!({"room": "r1"})).await;
    assert_eq!(reply["result"]["room"], "r1", "{reply}");
}

/// The HTTP API on one node acts on the whole cluster: publishes reach
/// members on other nodes, history, rooms and presence come from Redis,
/// sends and disconnects reach other nodes' connections, and a revocation
/// closes them there and holds on a node that starts later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_on_one_node_acts_on_the_whole_cluster() {
    const ADMIN: &str = "admin-token-0123456789";
    let redis = Redis::start();
    let admin = ["--admin-token", ADMIN];
    let a = node(&redis, "a", &admin);
    let b = node(&redis, "b", &admin);
    let mut bea = b.connect_as("bea").await;
    let bea_conn = bea.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    bea.call("rpc.join", json!({"room": "news"})).await;

    let reply = a.api(ADMIN, "publish", json!({"room": "news", "data": {"n": 1}}));
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_eq!(messages(&mut bea, 1).await[0]["data"], json!({"n": 1}));
    let reply = a.api(ADMIN, "history", json!({"room": "news"}));
    assert_eq!(
        reply["result"]["messages"],
        json!([{"offset": 1, "data": {"n": 1}}]),
        "{reply}"
    );
    let reply = a.api(ADMIN, "rooms", json!({"prefix": "ne"}));
    assert_eq!(
        reply["result"]["rooms"],
        json!([{"room": "news", "members": 1}]),
        "{reply}"
    );
    let reply = a.api(ADMIN, "presence", json!({"room": "news"}));
    assert_eq!(
        reply["result"]["members"],
        json!([{"user": "bea", "conn": bea_conn}]),
        "{reply}"
    );
    let reply = a.api(ADMIN, "info", Value::Null);
    assert_eq!(reply["result"]["node"], "a", "{reply}");

    a.api(
        ADMIN,
        "send",
        json!({"user": "bea", "event": "to-user", "data": 1}),
    );
    let (event, _) = bea.recv_until(|v| v["method"] == "rpc.event").await;
    assert_eq!(event["params"]["event"], "to-user");
    a.api(
        ADMIN,
        "send",
        json!({"conn": bea_conn, "event": "to-conn", "data": 2}),
    );
    let (event, _) = bea.recv_until(|v| v["method"] == "rpc.event").await;
    assert_eq!(event["params"]["event"], "to-conn");
    a.api(ADMIN, "broadcast", json!({"event": "to-all", "data": 3}));
    let (event, _) = bea.recv_until(|v| v["method"] == "rpc.event").await;
    assert_eq!(event["params"]["event"], "to-all");

    let reply = a.api(
        ADMIN,
        "disconnect",
        json!({"conn": bea_conn, "code": 4000, "reason": "moving you"}),
    );
    assert_eq!(reply["result"]["closed"], 1, "{reply}");
    assert_eq!(bea.expect_close().await, 4000);
    let mut twice = [b.connect_as("bea").await, b.connect_as("bea").await];
    for client in &mut twice {
        client.call("rpc.ping", Value::Null).await;
    }
    let reply = a.api(ADMIN, "disconnect", json!({"user": "bea"}));
    assert_eq!(reply["result"]["closed_here"], 0, "none on a: {reply}");
    for client in &mut twice {
        assert_eq!(client.expect_close().await, 4003);
    }

    // A revocation given to a closes the user's connection on b, and a
    // node that starts afterwards refuses the token too.
    let old = token_with(
        SECRET,
        json!({"sub": "mallory", "exp": now() + 3600, "iat": now() - 60}),
    );
    let mut mallory = Client::connect(&format!("{}?token={old}", b.ws_url())).await;
    mallory.call("rpc.ping", Value::Null).await;
    let reply = a.api(
        ADMIN,
        "revoke",
        json!({"user": "mallory", "until": now() + 600}),
    );
    assert!(reply.get("result").is_some(), "{reply}");
    assert_eq!(mallory.expect_close().await, 4002);
    let c = node(&redis, "c", &admin);
    for node in [&b, &c] {
        let request = format!("{}?token={old}", node.ws_url())
            .into_client_request()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        // c reads the revocations kept in Redis as it starts.
        loop {
            match Client::try_connect(request.clone()).await {
                Err(WsError::Http(response)) if response.status() == 401 => break,
                Ok(client) => {
                    assert!(
                        Instant::now() < deadline,
                        "the revoked token still signs in"
                    );
                    client.close().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("{other}"),
            }
        }
    }
}
