//! Plugins that break the ABI's rules, black box (issue #14, defects 2, 3
//! and 6): a raw-ABI plugin (`tests/plugins/raw-rogue`) completes a call
//! twice, answers with bytes that are not JSON, and answers from a thread
//! of its own that then stays in its code after its file is removed. The
//! server must refuse the second completion, answer -32603 for the bad
//! result, keep the library mapped until that thread has left it, and live
//! on through all three.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchboard_tests::{ServerConfig, error_code, wait_until};

fn rogue_server(args: &[&str]) -> switchboard_tests::Server {
    let mut config = ServerConfig::default().plugins(&["raw_rogue", "echo"]);
    for arg in args {
        config = config.arg(arg);
    }
    config.start()
}

#[tokio::test]
async fn a_second_completion_is_refused_and_the_server_lives_on() {
    let server = rogue_server(&[]);
    let mut client = server.connect().await;
    for _ in 0..20 {
        let reply = client.call("rogue/twice", Value::Null).await;
        assert_eq!(reply["result"], 1, "{reply}");
    }
    server.wait_for_log("a plugin completed a call twice");
    assert_eq!(client.call("echo", json!([1])).await["result"], json!([1]));
    assert_eq!(server.http_get("/healthz").0, 200);
}

#[tokio::test]
async fn a_result_that_is_not_json_is_refused_and_the_stream_stays_clean() {
    let server = rogue_server(&[]);
    let mut client = server.connect().await;
    let reply = client.call("rogue/garbage", Value::Null).await;
    assert_eq!(error_code(&reply), Some(-32603), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{reply}"
    );
    // The next frame on the same connection parses: nothing was spliced.
    assert_eq!(client.call("echo", json!([2])).await["result"], json!([2]));
}

/// Before, the completion dropped the generation's pin inside the
/// plugin's own thread: with the file removed, the sweeper unloaded the
/// library while that thread was still in it, and the server crashed when
/// the thread woke up.
#[tokio::test]
async fn a_generation_stays_mapped_until_the_thread_that_answered_leaves_it() {
    let mut server = rogue_server(&["--reload-debounce-ms", "20"]);
    let mut client = server.connect().await;
    let reply = client.call("rogue/linger", Value::Null).await;
    assert_eq!(reply["result"], "lingered", "{reply}");
    let answered = Instant::now();
    std::fs::remove_file(server.action_file("libraw_rogue.so")).unwrap();
    let rogue_generation = |server: &switchboard_tests::Server| {
        server.status()["generations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["plugin"] == "raw-rogue")
            .cloned()
            .unwrap_or(Value::Null)
    };
    // Removed, but not unmapped while the thread is in its code (it
    // stays there for a second after answering).
    wait_until("the removal to be taken", || {
        rogue_generation(&server)["state"] != "serving"
    });
    while answered.elapsed() < Duration::from_millis(900) {
        let state = rogue_generation(&server)["state"].clone();
        assert_ne!(state, "unmapped", "unmapped while its thread was in it");
        assert!(server.is_running(), "the server died: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Once the thread has ended, the generation goes.
    wait_until(
        "the generation to be unmapped after its thread ended",
        || rogue_generation(&server)["state"] == "unmapped",
    );
    assert!(server.is_running(), "{}", server.log());
    assert_eq!(client.call("echo", json!([3])).await["result"], json!([3]));
}
