//! The host API for actions, through the `chat` plugin: server-side joins
//! with a push on join, publishing into a room's history, sends to every
//! connection of a user, per-connection data, connection info, and calls
//! from the server to a client, answered and timed out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use switchboard_tests::{ServerConfig, error_code};

fn chat_server() -> switchboard_tests::Server {
    ServerConfig::default().plugins(&["chat", "echo"]).start()
}

#[tokio::test]
async fn joining_through_an_action_pushes_a_welcome_and_announces_the_arrival() {
    let server = chat_server();
    let mut ann = server.connect_as("ann").await;
    ann.request("j", "chat/join", json!({"room": "lounge"}))
        .await;
    // The reply, the welcome push and the arrival message, in any order.
    let mut frames = Vec::new();
    while frames.len() < 3 {
        frames.push(ann.recv().await);
    }
    let find = |want: &dyn Fn(&Value) -> bool| {
        frames
            .iter()
            .find(|f| want(f))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let joined = find(&|f| f["id"] == "j");
    assert_eq!(joined["result"]["room"], "chat:lounge", "{frames:?}");
    let welcome = find(&|f| f["method"] == "rpc.event");
    assert_eq!(welcome["params"]["event"], "chat.welcome");
    assert_eq!(welcome["params"]["data"]["members"][0]["user"], "ann");
    let arrival = find(&|f| f["method"] == "rpc.message");
    assert_eq!(arrival["params"]["data"]["system"], "ann joined");
    // The server-side join is a real membership: presence and publishes see it.
    let members = ann
        .call("rpc.presence", json!({"room": "chat:lounge"}))
        .await["result"]["members"]
        .clone();
    assert_eq!(members.as_array().unwrap().len(), 1);
    let mut ben = server.connect_as("ben").await;
    ben.call("chat/nick", json!({"nick": "Benny"})).await;
    // Only members send (issue #13: a send must not create rooms).
    let outside = ben
        .call("chat/send", json!({"room": "lounge", "text": "hello"}))
        .await;
    assert_eq!(error_code(&outside), Some(2006), "{outside}");
    ben.call("chat/join", json!({"room": "lounge"})).await;
    let sent = ben
        .call("chat/send", json!({"room": "lounge", "text": "hello"}))
        .await;
    let offset = sent["result"]["offset"].as_u64().unwrap();
    let (message, _) = ann
        .recv_until(|v| v["method"] == "rpc.message" && v["params"]["data"]["from"].is_string())
        .await;
    assert_eq!(
        message["params"]["data"],
        json!({"from": "Benny", "text": "hello"})
    );
    assert_eq!(message["params"]["offset"], offset);
    // Refusals with the plugin's own codes.
    assert_eq!(
        error_code(
            &ben.call("chat/send", json!({"room": "lounge", "text": " "}))
                .await
        ),
        Some(2001)
    );
    assert_eq!(
        error_code(&ben.call("chat/join", json!({"room": "no spaces"})).await),
        Some(-32602)
    );
}

#[tokio::test]
async fn a_send_to_a_user_reaches_all_of_their_connections() {
    let server = chat_server();
    let mut phone = server.connect_as("dee").await;
    let mut laptop = server.connect_as("dee").await;
    let mut other = server.connect_as("eve").await;
    let reply = other
        .call("chat/dm", json!({"to": "dee", "text": "psst"}))
        .await;
    assert_eq!(reply["result"]["delivered"], 2, "{reply}");
    for c in [&mut phone, &mut laptop] {
        let (dm, _) = c.recv_until(|v| v["method"] == "rpc.event").await;
        assert_eq!(dm["params"]["event"], "chat.dm");
        assert_eq!(dm["params"]["data"], json!({"from": "eve", "text": "psst"}));
    }
    assert_eq!(
        other
            .call("chat/dm", json!({"to": "nobody", "text": "hi"}))
            .await["result"]["delivered"],
        0
    );
    // An announcement reaches every signed-in connection but the sender's,
    // never one that has not signed in (issue #13, finding 8).
    let mut anon = server.connect().await;
    let reply = other
        .call("chat/announce", json!({"text": "maintenance at 5"}))
        .await;
    assert_eq!(reply["result"]["reached"], 2, "{reply}");
    for c in [&mut phone, &mut laptop] {
        let (push, _) = c
            .recv_until(|v| v["params"]["event"] == "chat.announcement")
            .await;
        assert_eq!(
            push["params"]["data"],
            json!({"from": "eve", "text": "maintenance at 5"})
        );
    }
    for (who, c) in [
        ("the sender", &mut other),
        ("an anonymous connection", &mut anon),
    ] {
        c.request("p", "rpc.ping", Value::Null).await;
        let (_, skipped) = c.recv_until(|v| v["id"] == "p").await;
        assert!(
            skipped
                .iter()
                .all(|f| f["params"]["event"] != "chat.announcement"),
            "{who} got the announcement: {skipped:?}"
        );
    }
}

#[tokio::test]
async fn connection_info_and_data() {
    let server = chat_server();
    let mut fay = server.connect_as("fay").await;
    let conn = fay.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    fay.call("chat/join", json!({"room": "a"})).await;
    fay.call("chat/nick", json!({"nick": "Fay F."})).await;
    let mut gus = server.connect_as("gus").await;
    // Outside fay's rooms, gus learns nothing of her connection (issue
    // #13, finding 8): the same refusal as for no connection at all.
    let stranger = gus.call("chat/whois", json!({"conn": conn})).await;
    assert_eq!(error_code(&stranger), Some(2002), "{stranger}");
    assert_eq!(
        error_code(&gus.call("chat/whois", json!({"conn": 999_999})).await),
        Some(2002)
    );
    gus.call("chat/join", json!({"room": "a"})).await;
    let info = gus.call("chat/whois", json!({"conn": conn})).await["result"].clone();
    assert_eq!(
        info,
        json!({"conn": conn, "user": "fay", "nick": "Fay F.", "rooms": ["chat:a"]}),
        "who she is and the rooms they share; never her address"
    );
}

#[tokio::test]
async fn the_server_calls_a_client_and_gets_its_answer_or_a_timeout() {
    let server = chat_server();
    let mut asker = server.connect_as("hal").await;
    let mut asked = server.connect_as("ivy").await;
    let asked_conn = asked.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    // A connection that shares no chat room with the asker cannot be asked
    // anything (issue #13, finding 8).
    let stranger = asker
        .call(
            "chat/ask",
            json!({"conn": asked_conn, "question": "lunch?"}),
        )
        .await;
    assert_eq!(error_code(&stranger), Some(2002), "{stranger}");
    asker.call("chat/join", json!({"room": "lunch"})).await;
    asked.call("chat/join", json!({"room": "lunch"})).await;
    asker
        .request(
            1,
            "chat/ask",
            json!({"conn": asked_conn, "question": "lunch?"}),
        )
        .await;
    // The asked client receives a call with a server id, and answers it.
    let (call, _) = asked.recv_until(|v| v["method"] == "chat/confirm").await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with('s'), "{call}");
    assert_eq!(call["params"], json!({"from": "hal", "question": "lunch?"}));
    asked
        .send(&json!({"jsonrpc": "2.0", "id": id, "result": {"yes": true}}))
        .await;
    let (reply, _) = asker.recv_until(|v| v.get("id").is_some()).await;
    assert_eq!(
        reply["result"],
        json!({"answer": {"yes": true}}),
        "{reply}\n{}",
        server.log()
    );
    // An error answer.
    asker
        .request(
            2,
            "chat/ask",
            json!({"conn": asked_conn, "question": "again?"}),
        )
        .await;
    let (call, _) = asked.recv_until(|v| v["method"] == "chat/confirm").await;
    asked
        .send(&json!({"jsonrpc": "2.0", "id": call["id"], "error": {"code": 1, "message": "no"}}))
        .await;
    let (reply, _) = asker.recv_until(|v| v.get("id").is_some()).await;
    assert_eq!(reply["error"]["code"], 2004, "{reply}");
    assert_eq!(reply["error"]["data"]["message"], "no");
    // No answer: a timeout, and a late answer is dropped without a reply.
    asker
        .request(
            3,
            "chat/ask",
            json!({"conn": asked_conn, "question": "still there?", "timeout_ms": 300}),
        )
        .await;
    let (call, _) = asked.recv_until(|v| v["method"] == "chat/confirm").await;
    let (reply, _) = asker.recv_until(|v| v.get("id").is_some()).await;
    assert_eq!(reply["error"]["code"], 2003, "{reply}");
    asked
        .send(&json!({"jsonrpc": "2.0", "id": call["id"], "result": true}))
        .await;
    assert_eq!(asked.call("rpc.ping", Value::Null).await["result"], "pong");
    // Another connection cannot answer a call made to this one.
    let mut thief = server.connect_as("jon").await;
    asker
        .request(
            4,
            "chat/ask",
            json!({"conn": asked_conn, "question": "mine?", "timeout_ms": 500}),
        )
        .await;
    let (call, _) = asked.recv_until(|v| v["method"] == "chat/confirm").await;
    thief
        .send(&json!({"jsonrpc": "2.0", "id": call["id"], "result": "stolen"}))
        .await;
    let (reply, _) = asker.recv_until(|v| v.get("id").is_some()).await;
    assert_eq!(
        reply["error"]["code"], 2003,
        "a foreign answer was accepted: {reply}"
    );
}

#[tokio::test]
async fn a_plugin_join_hook_approves_or_refuses_with_its_reason() {
    let (_dir, config) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(
            &path,
            "[[rooms]]\npattern = \"vetted:*\"\njoin = \"hook\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    };
    let server = ServerConfig::default()
        .plugins(&["chat", "echo"])
        .arg("--config")
        .arg(&config)
        .start();
    let mut guest = server.connect_as("kim").await;
    let reply = guest
        .call("rpc.join", json!({"room": "chat:staff-room"}))
        .await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("staff rooms are for staff")
    );
    // Not a member, so not told who is in it.
    let presence = guest
        .call("rpc.presence", json!({"room": "chat:staff-room"}))
        .await;
    assert_eq!(error_code(&presence), Some(-32002), "{presence}");
    // Approved: a welcome push, then membership.
    guest
        .request("j", "rpc.join", json!({"room": "chat:general"}))
        .await;
    let (first, second) = (guest.recv().await, guest.recv().await);
    let (reply, welcome) = if first["id"] == "j" {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(reply["result"]["room"], "chat:general", "{reply}");
    assert_eq!(welcome["params"]["event"], "chat.welcome", "{welcome}");
    let mut staff = server.connect_as("staff-lou").await;
    assert!(
        staff
            .call("rpc.join", json!({"room": "chat:staff-room"}))
            .await["result"]
            .is_object()
    );
    // A room whose rule needs a hook, with no hook for it, is refused.
    let reply = staff.call("rpc.join", json!({"room": "vetted:1"})).await;
    assert_eq!(error_code(&reply), Some(-32002), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no plugin decides")
    );
}
