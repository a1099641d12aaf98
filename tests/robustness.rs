//! Raw-socket robustness (issue #20), black box: clients that misbehave
//! below the WebSocket layer, against the real binary on 127.0.0.1, each
//! beside well-behaved clients that must go on being served:
//!
//! - TCP resets (`SO_LINGER` 0) in the middle of a frame and in the middle
//!   of the upgrade request leave no connection behind in `/status`;
//! - a slowloris (the upgrade request one byte a second) is closed by
//!   `handshake_timeout_ms`;
//! - a flood of connects that never upgrade is bounded
//!   (`max_pending_per_address`, `max_pending_handshakes`): past the bound
//!   each is answered 503 at once, memory stays flat, and other clients
//!   (another address, open connections) are served;
//! - a frame header promising 2 GiB is closed with 1009 before any of it
//!   is read or allocated.
//!
//! Clients from other addresses bind a source address in 127.0.0.0/8
//! (all loopback on Linux). Every wait polls with a deadline; the only
//! timing bounds are generous ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchboard_tests::{Server, ServerConfig, WAIT, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The address every client connects from unless it says otherwise.
const HERE: [u8; 4] = [127, 0, 0, 1];

/// Another loopback address: a client the flood from [`HERE`] must not
/// crowd out.
const ELSEWHERE: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `server` from `source` (any free port).
async fn tcp_from(source: [u8; 4], server: &Server) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let addr: SocketAddr = server.addr.parse().unwrap();
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .unwrap()
}

/// A plain HTTP GET from `source`: (status, whole response).
async fn get_from(source: [u8; 4], server: &Server, path: &str) -> (u16, String) {
    let mut stream = tcp_from(source, server).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// `/status` read from `source`.
async fn status_from(source: [u8; 4], server: &Server) -> Value {
    let (code, response) = get_from(source, server, "/status").await;
    status_of(code, &response)
}

/// The `/status` document in a response, which must be a 200.
fn status_of(code: u16, response: &str) -> Value {
    assert_eq!(code, 200, "{response}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    serde_json::from_str(body).unwrap()
}

/// Polls `/status` (from `source`) until `done` holds for it; fails
/// after [`WAIT`] with the last one. The poll is itself a pending
/// handshake: while a flood's places are still being given back it may
/// be refused (503, `max_pending_handshakes`), and is then tried again.
async fn wait_status(source: [u8; 4], server: &Server, what: &str, done: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    loop {
        let (code, response) = get_from(source, server, "/status").await;
        let last = if code == 503 && response.contains("max_pending_handshakes") {
            response
        } else {
            let status = status_of(code, &response);
            if done(&status) {
                return;
            }
            format!("{:#}", status["bounds"])
        };
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; the last /status: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open WebSocket connections and pending ones (the `/status` request
/// itself is one of those) in `status`.
fn counts(status: &Value) -> (u64, u64) {
    let bounds = &status["bounds"];
    (
        bounds["connections"]["open"].as_u64().unwrap(),
        bounds["pending_handshakes"]["open"].as_u64().unwrap(),
    )
}

/// A signed-in WebSocket to `/ws` from `source`.
async fn ws_from(source: [u8; 4], server: &Server, user: &str) -> WebSocketStream<TcpStream> {
    let url = format!("{}?token={}", server.ws_url(), token(user, 3600));
    let stream = tcp_from(source, server).await;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url.into_client_request().unwrap(), stream),
    )
    .await
    .expect("handshake in time")
    .expect("WebSocket handshake succeeds");
    ws
}

/// Calls `echo` on `ws` and checks the answer.
async fn echo(ws: &mut WebSocketStream<TcpStream>, n: u64) {
    let request = json!({"jsonrpc": "2.0", "id": n, "method": "echo", "params": {"n": n}});
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(text) = message {
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(reply["result"]["n"], n, "{reply}");
            return;
        }
    }
}

/// A well-behaved client from `source`: connects, signs in, calls echo.
async fn served(source: [u8; 4], server: &Server) {
    let mut ws = ws_from(source, server, "polite").await;
    echo(&mut ws, 1).await;
    let _ = ws.close(None).await;
}

/// The upgrade request for `/ws` with a token.
fn upgrade_request() -> String {
    upgrade_request_to(&format!("/ws?token={}", token("raw", 3600)))
}

/// The upgrade request for `path`.
fn upgrade_request_to(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A raw upgraded connection from `source`, signed in: the 101 is read,
/// frames follow.
async fn raw_upgraded(source: [u8; 4], server: &Server) -> TcpStream {
    raw_upgraded_with(source, server, &upgrade_request()).await
}

/// [`raw_upgraded`] with this upgrade request.
async fn raw_upgraded_with(source: [u8; 4], server: &Server, request: &str) -> TcpStream {
    let mut stream = tcp_from(source, server).await;
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("the 101 in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed during the upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A masked client frame's header: FIN, `opcode`, a payload of `len`
/// bytes (as the 7-, 16- or 64-bit length), a zero mask.
fn frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut header = vec![0x80 | opcode];
    match len {
        0..=125 => header.push(0x80 | len as u8),
        126..=65535 => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&len.to_be_bytes());
        }
    }
    header.extend_from_slice(&[0, 0, 0, 0]);
    header
}

/// Reads server frames until a Close and returns its code (`None`: the
/// connection ended without one, or nothing came within [`WAIT`]).
async fn close_code(stream: &mut TcpStream) -> Option<u16> {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.ok()?;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    stream.read_exact(&mut l).await.ok()?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    stream.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            stream.read_exact(&mut payload).await.ok()?;
            if head[0] & 0x0f == 0x8 {
                return Some(
                    payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
                );
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.ok().flatten()
}

#[tokio::test]
async fn resets_mid_frame_and_mid_handshake_leave_nothing_behind() {
    let server = ServerConfig::default().start();
    let mut steady = ws_from(HERE, &server, "steady").await;
    echo(&mut steady, 0).await;
    let request = upgrade_request();
    for round in 1..=40u64 {
        // Upgraded, then half a frame (a 100-byte text frame's header and
        // 10 bytes of it), then a reset.
        let mut stream = raw_upgraded(HERE, &server).await;
        let mut half = frame_header(0x1, 100);
        half.extend_from_slice(&[b'x'; 10]);
        stream.write_all(&half).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);
        // Half an upgrade request, then a reset.
        let mut stream = tcp_from(HERE, &server).await;
        let cut = request.len() / 2;
        stream.write_all(&request.as_bytes()[..cut]).await.unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);
        // Anonymous (no token): half a frame's header alone, then a reset.
        let mut stream = raw_upgraded_with(HERE, &server, &upgrade_request_to("/ws")).await;
        stream
            .write_all(&frame_header(0x2, 70_000)[..5])
            .await
            .unwrap();
        stream.set_zero_linger().unwrap();
        drop(stream);
        echo(&mut steady, round).await;
    }
    // Only the steady connection stays, and only this request is pending;
    // the anonymous ones gave their places back.
    wait_status(HERE, &server, "the reset connections to be gone", |s| {
        counts(s) == (1, 1) && s["bounds"]["anonymous_connections"]["open"] == 0
    })
    .await;
    served(HERE, &server).await;
    echo(&mut steady, 1000).await;
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

#[tokio::test]
async fn a_slowloris_handshake_is_closed_by_the_handshake_timeout_while_others_are_served() {
    const TIMEOUT_MS: u64 = 3000;
    let server = ServerConfig::default()
        .arg("--handshake-timeout-ms")
        .arg(&TIMEOUT_MS.to_string())
        .start();
    let request = upgrade_request().into_bytes();
    // Five clients, each sending the upgrade request one byte a second.
    let mut lorises = Vec::new();
    for _ in 0..5 {
        let mut stream = tcp_from(HERE, &server).await;
        let request = request.clone();
        lorises.push(tokio::spawn(async move {
            let start = Instant::now();
            for (sent, byte) in request.iter().enumerate() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return (sent, start.elapsed());
                }
                // A second, unless the server closes the connection first.
                let mut buf = [0u8; 256];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Err(_) => continue,
                    // Closed (or answered with an error and closed).
                    Ok(_) => return (sent + 1, start.elapsed()),
                }
            }
            panic!("the whole request went through, one byte a second");
        }));
    }
    // Meanwhile, others connect and call, again and again.
    let mut rounds = 0;
    while !lorises.iter().all(|l| l.is_finished()) {
        served(ELSEWHERE, &server).await;
        served(HERE, &server).await;
        rounds += 1;
        assert!(rounds < 1000, "the slow clients were never closed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for loris in lorises {
        let (sent, after) = loris.await.unwrap();
        eprintln!("slowloris closed after {sent} bytes, {after:?}");
        assert!(
            sent >= 2 && sent < request.len(),
            "closed after {sent} bytes"
        );
        // Generous: the timeout plus scheduling slack.
        assert!(
            after < Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(10),
            "closed only after {after:?}"
        );
    }
    assert!(rounds > 0);
    wait_status(HERE, &server, "no pending connection but this one", |s| {
        counts(s) == (0, 1)
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_connects_that_never_upgrade_is_bounded_and_refused_clearly() {
    const PER_ADDRESS: usize = 64;
    const TOTAL: usize = 300;
    const FLOOD: usize = 2000;
    let server = ServerConfig::default()
        .arg("--max-pending-per-address")
        .arg(&PER_ADDRESS.to_string())
        .arg("--max-pending-handshakes")
        .arg(&TOTAL.to_string())
        .arg("--handshake-timeout-ms")
        .arg("60000")
        .start();
    let mut steady = ws_from(HERE, &server, "steady").await;
    echo(&mut steady, 0).await;
    let rss_before = server.rss_kib();

    // From one address: the first PER_ADDRESS are held, every other one
    // is answered 503 at once.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(tcp_from(HERE, &server).await);
    }
    let (held, refusals) = sort_out(flood).await;
    assert_eq!(held.len(), PER_ADDRESS, "connections held from one address");
    assert_eq!(refusals.len(), FLOOD - PER_ADDRESS);
    let refusal = &refusals[0];
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("Retry-After: 1"), "{refusal}");
    assert!(refusal.contains("max_pending_per_address"), "{refusal}");
    // Others are served: an open connection, and newcomers from elsewhere.
    echo(&mut steady, 1).await;
    served(ELSEWHERE, &server).await;
    let status = status_from(ELSEWHERE, &server).await;
    let pending = &status["bounds"]["pending_handshakes"];
    assert_eq!(pending["max"], TOTAL, "{pending}");
    assert_eq!(pending["max_per_address"], PER_ADDRESS, "{pending}");
    assert!(
        pending["refused"].as_u64().unwrap() >= (FLOOD - PER_ADDRESS) as u64,
        "{pending}"
    );

    // From many addresses: past TOTAL in all, refused too.
    let mut wide = Vec::new();
    for n in 0..(TOTAL / PER_ADDRESS + 2) {
        for _ in 0..PER_ADDRESS {
            wide.push(tcp_from([127, 0, 1, n as u8 + 1], &server).await);
        }
    }
    let wide_count = wide.len();
    let (wide_held, wide_refusals) = sort_out(wide).await;
    assert_eq!(
        wide_held.len(),
        TOTAL - PER_ADDRESS,
        "held in all beside the first flood"
    );
    assert_eq!(wide_refusals.len(), wide_count - (TOTAL - PER_ADDRESS));
    let refusal = &wide_refusals[0];
    assert!(refusal.starts_with("HTTP/1.1 503"), "{refusal}");
    assert!(refusal.contains("max_pending_handshakes"), "{refusal}");
    // Open connections go on being served meanwhile.
    echo(&mut steady, 2).await;
    let rss_flooded = server.rss_kib();
    eprintln!(
        "flood: {} held and {} refused from one address, {} held and {} refused from \
         many; RSS {rss_before} -> {rss_flooded} KiB",
        PER_ADDRESS,
        FLOOD - PER_ADDRESS,
        wide_held.len(),
        wide_refusals.len()
    );
    assert!(
        rss_flooded < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_flooded} KiB"
    );

    // Gone: the places are given back, and newcomers are served again.
    drop(held);
    drop(wide_held);
    wait_status(
        ELSEWHERE,
        &server,
        "the flood's places to be given back",
        |s| counts(s) == (1, 1),
    )
    .await;
    served(HERE, &server).await;
    echo(&mut steady, 3).await;
}

/// Waits for each connection's first answer: held (nothing within a
/// second) or refused (the response it got, up to its end).
async fn sort_out(streams: Vec<TcpStream>) -> (Vec<TcpStream>, Vec<String>) {
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut response = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
                    {
                        Err(_) if response.is_empty() => return Ok(stream),
                        Ok(Ok(n)) if n > 0 => response.extend_from_slice(&buf[..n]),
                        _ => return Err(String::from_utf8_lossy(&response).into_owned()),
                    }
                }
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut refusals = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(stream) => held.push(stream),
            Err(response) => refusals.push(response),
        }
    }
    (held, refusals)
}

#[tokio::test]
async fn a_frame_header_promising_2_gib_is_closed_with_1009_without_allocating() {
    let server = ServerConfig::default().start();
    let mut steady = ws_from(HERE, &server, "steady").await;
    echo(&mut steady, 0).await;
    let rss_before = server.rss_kib();
    for round in 1..=20u64 {
        let mut stream = raw_upgraded(HERE, &server).await;
        let opcode = if round % 2 == 0 { 0x1 } else { 0x2 };
        let mut frame = frame_header(opcode, 2 << 30);
        frame.extend_from_slice(&[b'x'; 4096]);
        stream.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut stream).await, Some(1009), "round {round}");
        echo(&mut steady, round).await;
    }
    // A message that passes the limit in a second fragment: 1009 too.
    let mut stream = raw_upgraded(HERE, &server).await;
    let mut first = frame_header(0x1, 1000);
    first[0] &= 0x7f; // not the last fragment
    first.extend_from_slice(&[b'x'; 1000]);
    let mut next = frame_header(0x0, 2 << 30);
    next[0] &= 0x7f;
    stream.write_all(&first).await.unwrap();
    stream.write_all(&next).await.unwrap();
    assert_eq!(close_code(&mut stream).await, Some(1009));

    let rss_after = server.rss_kib();
    eprintln!("2 GiB headers: RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    served(ELSEWHERE, &server).await;
    wait_status(HERE, &server, "the refused connections to be gone", |s| {
        counts(s) == (1, 1)
    })
    .await;
}
