//! The Rust client (`switchboard::client`) against a real `switchboard
//! serve`: calls, errors and timeouts, pushed events, the server's calls
//! answered by a handler, and a socket dropped in the middle of a burst of
//! publishes with every message delivered once, in order, after the
//! reconnect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use switchboard::client::{CallError, Client, ClientEvent, ClientOptions};
use switchboard_tests::{Server, ServerConfig, token};

async fn client(server: &Server, user: &str) -> Client {
    let user = user.to_owned();
    let options = ClientOptions {
        token: Some(Arc::new(move || {
            let token = token(&user, 3600);
            Box::pin(async move { Some(token) })
        })),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    Client::connect(&server.ws_url(), options).await.unwrap()
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "[[rooms]]\npattern = \"burst\"\nhistory_size = 1000\n",
    )
    .unwrap();
    // The settings are read at start: the folder may go after.
    ServerConfig::default()
        .plugins(&["echo", "chat"])
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answer_fail_with_the_servers_error_and_time_out() {
    let server = server();
    let sb = client(&server, "ada").await;
    assert_eq!(sb.call("rpc.ping", json!(null)).await.unwrap(), "pong");
    assert_eq!(
        sb.call("echo/whoami", json!(null)).await.unwrap()["user"],
        "ada"
    );
    match sb.call("no/such", json!(null)).await {
        Err(CallError::Rpc { code, message, .. }) => {
            assert_eq!(code, -32601);
            assert!(message.contains("no action"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let slow = sb
        .call_with_timeout(
            "echo/sleep",
            json!({"ms": 1500}),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(slow, Err(CallError::Timeout(Duration::from_millis(100))));
    sb.close();

    // Calls waiting for replies are bounded.
    let mut options = ClientOptions::with_token(token("bounded", 3600));
    options.max_pending = 2;
    let bounded = Client::connect(&server.ws_url(), options).await.unwrap();
    let slow = |c: Client| async move { c.call("echo/sleep", json!({"ms": 500})).await };
    let first = tokio::spawn(slow(bounded.clone()));
    let second = tokio::spawn(slow(bounded.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    match bounded.call("rpc.ping", json!(null)).await {
        Err(CallError::Rpc { code, message, .. }) => {
            assert_eq!(code, -32006);
            assert!(message.contains("max_pending"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(first.await.unwrap().is_ok() && second.await.unwrap().is_ok());
    assert_eq!(bounded.call("rpc.ping", json!(null)).await.unwrap(), "pong");
    bounded.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_the_servers_calls_reach_the_client() {
    let server = server();
    let ann = client(&server, "ann").await;
    let bob = client(&server, "bob").await;
    let mut events = ann.events();
    ann.handle(
        "chat/confirm",
        Arc::new(|params| {
            Box::pin(async move {
                Ok(json!(format!(
                    "yes to {}",
                    params["question"].as_str().unwrap_or("")
                )))
            })
        }),
    );
    ann.call("chat/join", json!({"room": "rs"})).await.unwrap();
    bob.call("chat/join", json!({"room": "rs"})).await.unwrap();
    bob.call("chat/dm", json!({"to": "ann", "text": "psst"}))
        .await
        .unwrap();
    loop {
        if let ClientEvent::Event { event, data } = events.recv().await.unwrap()
            && event == "chat.dm"
        {
            assert_eq!(data["text"], "psst");
            break;
        }
    }
    let conn = ann.call("echo/whoami", json!(null)).await.unwrap()["conn"].clone();
    let answer = bob
        .call("chat/ask", json!({"conn": conn, "question": "tea?"}))
        .await
        .unwrap();
    assert_eq!(answer, json!({"answer": "yes to tea?"}));
    ann.close();
    bob.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_mid_burst_loses_and_doubles_nothing() {
    let server = server();
    let reader = client(&server, "reader").await;
    let writer = client(&server, "writer").await;
    let mut events = reader.events();
    let mut burst = reader.join("burst").await.unwrap();
    writer.join("burst").await.unwrap();
    let publishing = {
        let writer = writer.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                writer.publish("burst", json!(i)).await.unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(burst.next().await.unwrap().data);
    }
    reader.drop_connection();
    publishing.await.unwrap();
    while got.len() < 200 {
        let message = tokio::time::timeout(Duration::from_secs(10), burst.next())
            .await
            .expect("every message after the reconnect")
            .unwrap();
        got.push(message.data);
    }
    assert_eq!(got, (0..200).map(|i| json!(i)).collect::<Vec<_>>());
    // Nothing more (no message twice).
    assert!(
        tokio::time::timeout(Duration::from_millis(300), burst.next())
            .await
            .is_err()
    );
    let mut recovered = None;
    while let Ok(event) = events.try_recv() {
        if let ClientEvent::Recovered { room, recovered: r } = event {
            assert_eq!(room, "burst");
            recovered = Some(r);
        }
    }
    assert_eq!(recovered, Some(true));
    reader.close();
    writer.close();
}
