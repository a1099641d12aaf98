//! Fuzzes the dispatch path with a real plugin loaded: the `echo` plugin
//! (built by `.ci/fuzz`; its path in `SWITCHBOARD_FUZZ_PLUGIN`) in a
//! registry loaded through the server's own loader (`Dlopen`), a
//! `ServerState` as the server builds it, and a connection's `Session`.
//! Each input is a flags byte (bit 0: signed in) and one frame, parsed
//! with `parse_frame`, and every request dispatched as a connection does
//! (built-ins inline, actions on the action pool under a deadline). Checked: no panic, and every reply is JSON-RPC
//! 2.0 with the request's id and either a result or an error with an
//! integer code; notifications get no reply.
//!
//! Requests to the actions that only wait (`echo/sleep`, `echo/spin`,
//! `echo/later`) are skipped: they would hold pool threads for up to a
//! minute, which costs throughput and tests nothing a deadline test does
//! not. The state lives for the whole run (its action pool's threads do),
//! so one input's joins and sign-ins are seen by the next, as on a server.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use switchboard::auth::{Authenticator, Handshake, Identity};
use switchboard::config::{AuthStep, Config};
use switchboard::limits::ConnectionLimits;
use switchboard::plugins::loader::Dlopen;
use switchboard::plugins::services::NoServer;
use switchboard::plugins::{Registry, ReloadSettings, ShadowDir};
use switchboard::rpc::dispatch::{Dispatched, dispatch};
use switchboard::rpc::protocol::{Frame, parse_frame};
use switchboard::rpc::rates::ConnectionRates;
use switchboard::rpc::session::{Session, next_conn_id};
use switchboard::state::ServerState;

#[path = "common/reply.rs"]
mod reply;
use reply::Reply;

struct World {
    runtime: tokio::runtime::Runtime,
    state: Arc<ServerState>,
    _folders: Vec<PathBuf>,
}

static WORLD: LazyLock<World> = LazyLock::new(world);

fn world() -> World {
    let plugin = std::env::var_os("SWITCHBOARD_FUZZ_PLUGIN").map(PathBuf::from).expect(
        "SWITCHBOARD_FUZZ_PLUGIN must name the built echo plugin (libecho.so); .ci/fuzz sets it",
    );
    let base =
        std::env::temp_dir().join(format!("switchboard-fuzz-dispatch-{}", std::process::id()));
    let (actions, shadow) = (base.join("actions"), base.join("shadow"));
    std::fs::create_dir_all(&actions).expect("an actions folder");
    std::fs::create_dir_all(&shadow).expect("a shadow folder");
    std::fs::copy(&plugin, actions.join("libecho.so")).expect("the plugin copied");
    let config = Config {
        call_timeout_ms: 200,
        max_batch: 8,
        max_inflight_calls: 64,
        ..Config::default()
    };
    let settings = ReloadSettings {
        default_timeout: config.call_timeout(),
        max_generations: 2,
        preflight_timeout: None,
        protect_retired: false,
        trust: None,
        services: Arc::new(NoServer),
        loader: Arc::new(Dlopen),
    };
    let shadow = ShadowDir::create(&shadow, true).expect("a shadow folder");
    let registry = Registry::load(&actions, shadow, settings).expect("the plugin folder loads");
    assert!(
        registry.snapshot().get("echo").is_some(),
        "the echo plugin did not load: {:?}",
        registry.generations()
    );
    let auth = Authenticator::new(&config, None);
    let limits = ConnectionLimits {
        max_connections: 16,
        max_anonymous: 16,
        max_anonymous_per_address: 16,
        open_files: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    World {
        runtime,
        state: Arc::new(ServerState::new(config, registry, auth, limits)),
        _folders: vec![base],
    }
}

// The input: one byte of flags (bit 0: the connection is signed in), then
// the frame's text, so the seeds are frames a person can read.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, frame)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(frame) else {
        return;
    };
    let world = &*WORLD;
    world
        .runtime
        .block_on(run(&world.state, text.to_owned(), flags & 1 == 1));
});

/// The actions that only wait (see the module comment).
const SLOW: [&str; 3] = ["echo/sleep", "echo/spin", "echo/later"];

async fn run(state: &Arc<ServerState>, text: String, signed_in: bool) {
    let mut session = session(state, signed_in);
    let frame = Bytes::from(text);
    let Ok(text) = std::str::from_utf8(&frame) else {
        return;
    };
    let items = match parse_frame(text, state.config.max_batch) {
        Frame::Refused(_) => return,
        Frame::Single(item) => vec![item],
        Frame::Batch(items) => items,
    };
    for envelope in items.iter().filter_map(|item| item.as_ref().ok()) {
        if SLOW.contains(&&*envelope.method) {
            continue;
        }
        let dispatched = dispatch(state, &mut session, envelope, &frame, text).await;
        let reply = match dispatched {
            Dispatched::Ready(reply) => reply,
            Dispatched::Running(reply) => {
                match tokio::time::timeout(Duration::from_secs(5), reply).await {
                    Ok(reply) => reply,
                    Err(_) => panic!("no reply within 5 s (the deadline is 200 ms): {text}"),
                }
            }
            Dispatched::Pool(call) => {
                match tokio::time::timeout(Duration::from_secs(5), call.into_future()).await {
                    Ok(reply) => reply,
                    Err(_) => panic!("no reply within 5 s (the deadline is 200 ms): {text}"),
                }
            }
        };
        let is_call = envelope.id.is_some() && envelope.answer.is_none();
        match reply {
            None => assert!(!is_call, "a request got no reply: {text}"),
            Some(reply) => {
                assert!(is_call, "a notification got a reply: {reply}");
                check_reply(&reply, envelope.id);
            }
        }
    }
}

fn check_reply(reply: &str, id: Option<&str>) {
    let parsed: Reply<'_> = match serde_json::from_str(reply) {
        Ok(parsed) => parsed,
        Err(e) => panic!("not a JSON-RPC reply with an integer code and a message ({e}): {reply}"),
    };
    assert_eq!(parsed.jsonrpc, "2.0", "{reply}");
    if let Some(id) = id {
        assert_eq!(parsed.id.get(), id, "{reply}");
    }
    assert!(
        parsed.result.is_some() != parsed.error.is_some(),
        "result xor error: {reply}"
    );
}

fn session(state: &ServerState, signed_in: bool) -> Session {
    let identity = signed_in.then(|| {
        Arc::new(Identity {
            user: Arc::from("fuzzer"),
            expires_at: None,
            scopes: Arc::from(""),
            rooms: Arc::from(Vec::new()),
            data: None,
            source: AuthStep::Jwt,
            issued_at: None,
            jti: None,
        })
    });
    Session::new(
        next_conn_id(),
        identity,
        None,
        Arc::new(Handshake::default()),
        state.config.max_inflight_per_connection,
        0,
        ConnectionRates::new(&state.config),
    )
}
