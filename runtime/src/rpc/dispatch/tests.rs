//! Dispatch over a registry of fake plugins: results and each kind of
//! failure mapped to its protocol code, built-ins, notifications, sign-in
//! and the per-connection bound on running calls.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;
use crate::auth::{Authenticator, Handshake};
use crate::config::Config;
use crate::limits::ConnectionLimits;
use crate::plugins::registry::tests::registry;
use crate::rpc::protocol::{Frame, parse_frame};
use serde_json::Value;
use std::time::Duration;

/// The fake plugin's actions, by the behaviour of their index (see
/// `plugins::fake`): echo, refuse, panic, not JSON, hang (50 ms
/// deadline), and a private one.
const PLUGIN: &str =
    "name=t version=1 actions=t/echo!,t/refuse!,t/panic!,t/garbage!,t/hang!@50,t/private code=1";

/// A server over the fake plugin, and the folders it lives in.
pub(crate) struct Server {
    /// Its state.
    pub(crate) state: Arc<ServerState>,
    _folders: (tempfile::TempDir, tempfile::TempDir),
}

/// The same behaviours, each action inline (run on the caller's thread).
const INLINE_PLUGIN: &str =
    "name=t version=1 actions=t/echo!~,t/refuse!~,t/panic!~,t/garbage!~,t/hang!~@50 code=1";

/// A server over [`PLUGIN`], allowing each connection
/// `max_inflight_per_connection` running calls.
pub(crate) fn server(max_inflight_per_connection: usize) -> Server {
    server_of(PLUGIN, max_inflight_per_connection)
}

/// A server over `plugin` (the fake plugin's description), allowing
/// each connection `max_inflight_per_connection` running calls.
pub(crate) fn server_of(plugin: &str, max_inflight_per_connection: usize) -> Server {
    let (registry, _loader, dir, shadow) = registry(&[("t", plugin)]);
    let config = Config {
        max_inflight_per_connection,
        ..Config::default()
    };
    let auth = Authenticator::new(&config, None);
    let limits = ConnectionLimits {
        max_connections: 16,
        max_anonymous: 16,
        max_anonymous_per_address: 16,
        open_files: None,
    };
    Server {
        state: Arc::new(ServerState::new(config, registry, auth, limits)),
        _folders: (dir, shadow),
    }
}

/// A connection's session, signed in as `user` if given.
pub(crate) fn session(state: &ServerState, user: Option<&str>) -> Session {
    let identity = user
        .map(|user| Identity::for_test(user, None))
        .map(Arc::new);
    Session::new(
        crate::rpc::session::next_conn_id(),
        identity,
        None,
        Arc::new(Handshake::default()),
        state.config.max_inflight_per_connection,
        0,
        crate::rpc::rates::ConnectionRates::new(&state.config),
    )
}

/// Dispatches one request as a connection would, without waiting for a
/// running action.
async fn start(state: &Arc<ServerState>, session: &mut Session, request: &str) -> Dispatched {
    let frame = Bytes::from(request.to_owned());
    let text = std::str::from_utf8(&frame).unwrap();
    let Frame::Single(Ok(envelope)) = parse_frame(text, 10) else {
        panic!("not a single request: {request}");
    };
    dispatch(state, session, &envelope, &frame, text).await
}

/// Dispatches one request and waits for its reply.
async fn call(state: &Arc<ServerState>, session: &mut Session, request: &str) -> Option<Value> {
    let reply = match start(state, session, request).await {
        Dispatched::Ready(reply) => reply,
        Dispatched::Running(reply) => reply.await,
        Dispatched::Pool(call) => call.into_future().await,
    };
    reply.map(|r| serde_json::from_str(&r).expect("replies are JSON"))
}

/// A request with id 7.
pub(crate) fn request(method: &str, params: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":7,"method":"{method}","params":{params}}}"#)
}

#[tokio::test]
async fn a_result_comes_back_as_the_plugin_gave_it() {
    let s = server(8);
    let mut session = session(&s.state, None);
    let reply = call(
        &s.state,
        &mut session,
        &request("t/echo", r#"{"a": [1, 2.50]}"#),
    )
    .await;
    let reply = reply.expect("a reply");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"], serde_json::json!({"a": [1, 2.5]}));
    assert_eq!(
        s.state
            .registry
            .snapshot()
            .get("t/echo")
            .unwrap()
            .plugin
            .calls
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the call is counted on its generation"
    );
}

#[tokio::test]
async fn each_failure_gets_its_protocol_code() {
    let s = server(8);
    let mut session = session(&s.state, None);
    let mut error = async |method: &str| {
        let reply = call(&s.state, &mut session, &request(method, "null"))
            .await
            .unwrap();
        (
            reply["error"]["code"].as_i64().unwrap(),
            reply["error"]["message"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        error("t/refuse").await,
        (1000, "no".to_owned()),
        "the action's own error"
    );
    let (code, message) = error("t/panic").await;
    assert_eq!((code, message.contains("panicked: boom")), (-32005, true));
    let (code, message) = error("t/garbage").await;
    assert_eq!((code, message.contains("not valid JSON")), (-32603, true));
    let (code, message) = error("t/hang").await;
    assert_eq!(
        (code, message.as_str()),
        (-32003, "action 't/hang' did not answer within 50 ms")
    );
    assert_eq!(error("t/none").await.0, -32601);
    assert_eq!(error("rpc.none").await.0, -32601);
}

#[tokio::test]
async fn a_private_action_needs_a_sign_in() {
    let s = server(8);
    let mut anonymous = session(&s.state, None);
    let reply = call(&s.state, &mut anonymous, &request("t/private", "null"))
        .await
        .unwrap();
    assert_eq!(reply["error"]["code"], -32001);
    let mut ann = session(&s.state, Some("ann"));
    let reply = call(&s.state, &mut ann, &request("t/private", "null"))
        .await
        .unwrap();
    assert_eq!(reply["result"], 1, "index 5 answers with its code");
}

#[tokio::test]
async fn built_ins_answer_at_once_and_a_notification_gets_no_reply() {
    let s = server(8);
    let mut session = session(&s.state, None);
    let ping = start(&s.state, &mut session, &request("rpc.ping", "null")).await;
    assert!(matches!(ping, Dispatched::Ready(Some(ref r)) if r.contains(r#""result":"pong""#)));
    let notification = r#"{"jsonrpc":"2.0","method":"t/echo","params":[1]}"#;
    let Dispatched::Pool(call) = start(&s.state, &mut session, notification).await else {
        panic!("an action runs even when nobody waits for its reply");
    };
    assert_eq!(call.into_future().await, None);
}

#[tokio::test]
async fn a_connection_past_its_running_calls_is_refused_without_waiting() {
    let s = server(1);
    let mut session = session(&s.state, None);
    let hung = start(&s.state, &mut session, &request("t/hang", "null")).await;
    let Dispatched::Pool(hung) = hung else {
        panic!("the first call runs");
    };
    let hung = hung.into_future();
    let second = start(&s.state, &mut session, &request("t/echo", "[1]")).await;
    assert!(
        matches!(second, Dispatched::Ready(Some(ref r)) if r.contains("-32006")),
        "{second:?}"
    );
    // The call that never answers gets its -32003 at its deadline.
    assert!(hung.await.is_some_and(|r| r.contains("-32003")));
}

/// Dispatches one request as a connection's fast path does (actions only),
/// with the frame as tungstenite delivers it.
pub(crate) fn start_now(
    state: &Arc<ServerState>,
    session: &mut Session,
    request: &str,
) -> Dispatched {
    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(request.to_owned());
    let Frame::Single(Ok(envelope)) = parse_frame(frame.as_str(), 10) else {
        panic!("not a single request: {request}");
    };
    let started = Instant::now();
    let mut clock = started;
    let dispatched = dispatch_now(
        state,
        session,
        &envelope,
        FrameSource::Text(&frame),
        &mut clock,
    )
    .expect("an action call is taken at once");
    if matches!(dispatched, Dispatched::Ready(_)) {
        assert!(
            clock > started,
            "answered at once: the clock is left at its end"
        );
    }
    dispatched
}

#[tokio::test]
async fn an_inline_action_answers_at_once_or_later_with_the_calls_id() {
    let s = server_of(INLINE_PLUGIN, 8);
    let mut session = session(&s.state, None);
    // Through the general path, then through the fast path.
    for at_once in [false, true] {
        let state = &s.state;
        let mut start = async |request: &str| {
            if at_once {
                start_now(state, &mut session, request)
            } else {
                start(state, &mut session, request).await
            }
        };
        let echoed = start(&request("t/echo", "[1, 2]")).await;
        let Dispatched::Ready(Some(reply)) = echoed else {
            panic!("an inline action that answers in its call is answered at once: {echoed:?}");
        };
        assert_eq!(reply, r#"{"jsonrpc":"2.0","id":7,"result":[1, 2]}"#);
        // One that keeps its reply handle is awaited under its deadline,
        // and the reply still carries the call's id (sliced out of the
        // frame, which is gone by then).
        let hung = start(&request("t/hang", "null")).await;
        let Dispatched::Running(hung) = hung else {
            panic!("an inline action that has not answered is awaited");
        };
        let reply: Value = serde_json::from_str(&hung.await.expect("a reply")).unwrap();
        assert_eq!(
            (reply["id"].as_i64(), reply["error"]["code"].as_i64()),
            (Some(7), Some(-32003))
        );
    }
    // Built-ins are not taken at once.
    let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(request("rpc.ping", "null"));
    let Frame::Single(Ok(envelope)) = parse_frame(frame.as_str(), 10) else {
        panic!("not a request");
    };
    let mut clock = Instant::now();
    assert!(
        dispatch_now(
            &s.state,
            &mut session,
            &envelope,
            FrameSource::Text(&frame),
            &mut clock
        )
        .is_none()
    );
}

#[tokio::test]
async fn a_pool_call_is_left_to_start_with_its_deadline_from_the_call() {
    let s = server(8);
    let mut session = session(&s.state, Some("u"));
    let before = Instant::now();
    let Dispatched::Pool(call) = start_now(&s.state, &mut session, &request("t/hang", "null"))
    else {
        panic!("a pool action's call is left to start");
    };
    let deadline = call.deadline().expect("a deadline");
    assert!(deadline >= before + Duration::from_millis(50));
    assert!(deadline <= Instant::now() + Duration::from_millis(50));
    let reply: Value = serde_json::from_str(&call.into_future().await.expect("a reply")).unwrap();
    assert_eq!(reply["error"]["code"], -32003);
}
