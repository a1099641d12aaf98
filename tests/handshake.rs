//! Admission on the WebSocket handshake and TLS: allowed origins (403),
//! the connection limit (503 with `Retry-After`), and `wss://` / `https://`
//! with the self-signed fixture in `tests/fixtures/tls/`.
//!
//! The harness starts plain-text servers only (it waits for
//! `listening on http://`), so the TLS tests start the binary themselves
//! with [`TlsServer`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use switchboard_tests::{Client, SECRET, Server, ServerConfig, WAIT, binary, plugin, token};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// ---- allowed_origins ----------------------------------------------------

/// Opens a WebSocket to `server` with this `Origin` header.
async fn connect_from(server: &Server, origin: &str) -> Result<Client, WsError> {
    let mut request = server.ws_url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    Client::try_connect(request).await
}

/// The status, headers and body of a refused handshake.
fn refusal(result: Result<Client, WsError>) -> (u16, Option<String>, String) {
    match result {
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, but the handshake succeeded"),
    }
}

fn origins_server(origins: &str) -> Server {
    ServerConfig::default()
        .arg("--allowed-origins")
        .arg(origins)
        .start()
}

#[tokio::test]
async fn a_listed_origin_connects_and_calls() {
    let server = origins_server("https://app.example.com,http://localhost:3000");
    for origin in [
        "https://app.example.com",
        "HTTPS://App.Example.COM",
        "http://localhost:3000",
    ] {
        let mut c = connect_from(&server, origin).await.unwrap();
        assert_eq!(
            c.call("echo", json!([origin])).await["result"],
            json!([origin])
        );
    }
}

#[tokio::test]
async fn an_unlisted_origin_is_refused_with_403_and_how_to_allow_it() {
    let server = origins_server("https://app.example.com");
    for origin in [
        "https://evil.example",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let (status, _, body) = refusal(connect_from(&server, origin).await);
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains(&format!("origin {origin} ")), "{body}");
        assert!(body.contains("allowed_origins"), "{body}");
        assert!(body.contains("--allowed-origins"), "{body}");
    }
    server.wait_for_log("origin not allowed");
    // A refused origin never reaches the token check, nor counts.
    assert_eq!(server.status()["connections"], 0);
}

#[tokio::test]
async fn a_request_without_origin_is_allowed() {
    let server = origins_server("https://app.example.com");
    let mut c = server.connect_as("alice").await;
    assert_eq!(
        c.call("echo/whoami", Value::Null).await["result"]["user"],
        "alice"
    );
}

#[tokio::test]
async fn wildcard_entries_allow_subdomains_and_star_allows_all() {
    let server = origins_server("https://*.example.com");
    for origin in ["https://a.example.com", "https://deep.b.example.com"] {
        let mut c = connect_from(&server, origin).await.unwrap();
        assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    }
    for origin in [
        "https://example.com",
        "https://evilexample.com",
        "http://a.example.com",
    ] {
        assert_eq!(
            refusal(connect_from(&server, origin).await).0,
            403,
            "{origin}"
        );
    }

    let server = origins_server("*");
    for origin in ["https://anything.example", "null"] {
        let mut c = connect_from(&server, origin).await.unwrap();
        assert_eq!(c.call("rpc.ping", Value::Null).await["result"], "pong");
    }
}

// ---- max_connections ----------------------------------------------------

/// Polls `/status` until it reports `n` open connections.
fn wait_for_connections(server: &Server, n: u64) {
    let start = Instant::now();
    loop {
        let open = server.status()["connections"].as_u64().unwrap();
        if open == n {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "/status kept reporting {open} connections, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn past_max_connections_upgrades_get_503_until_a_slot_frees() {
    let server = ServerConfig::default()
        .arg("--max-connections")
        .arg("2")
        .start();
    let first = server.connect_as("ann").await;
    let mut second = server.connect_as("bob").await;
    wait_for_connections(&server, 2);

    let url = format!("{}?token={}", server.ws_url(), token("cy", 3600));
    let (status, retry_after, body) =
        refusal(Client::try_connect(url.into_client_request().unwrap()).await);
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("connection limit"), "{body}");
    // Plain HTTP is not limited.
    assert_eq!(server.http_get("/healthz").0, 200);

    first.close().await;
    wait_for_connections(&server, 1);
    let mut third = server.connect_as("cy").await;
    assert_eq!(third.call("echo", json!([3])).await["result"], json!([3]));
    assert_eq!(second.call("echo", json!([2])).await["result"], json!([2]));
}

// ---- TLS ------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

/// A running `switchboard serve` with TLS on (the fixture certificate),
/// the echo plugin and the test secret, on a free port; killed when
/// dropped.
struct TlsServer {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// `switchboard serve` on a free port with the echo plugin and `args`.
fn serve_command(args: &[&str]) -> (Command, (tempfile::TempDir, tempfile::TempDir)) {
    let actions = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let echo = plugin("echo");
    std::fs::copy(&echo, actions.path().join(echo.file_name().unwrap())).unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--actions")
        .arg(actions.path())
        .arg("--shadow-dir")
        .arg(shadow.path())
        .arg("--jwt-secret")
        .arg(SECRET)
        .args(args)
        .env("RUST_LOG", "info,switchboard=debug")
        .env_remove("SWITCHBOARD_CONFIG")
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .env_remove("SWITCHBOARD_TLS_CERT")
        .env_remove("SWITCHBOARD_TLS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    (cmd, (actions, shadow))
}

impl TlsServer {
    fn start() -> TlsServer {
        let cert = fixture("localhost.crt");
        let key = fixture("localhost.key");
        let (mut cmd, dirs) = serve_command(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        let mut child = cmd.spawn().expect("switchboard starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let into = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on https://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.to_owned());
                }
                let mut log = into.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok(addr) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!(
                "TLS server did not start; its log:\n{}",
                log.lock().unwrap()
            );
        };
        TlsServer {
            child,
            addr,
            log,
            _dirs: dirs,
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                start.elapsed() < WAIT,
                "log never contained {needle:?}; log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Opens a TLS connection as `name` with `config`.
    async fn tls(
        &self,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        let name = ServerName::try_from(name.to_owned()).unwrap();
        tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
            .await
            .expect("TLS handshake in time")
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that trusts the fixture certificate (`trusted`) or nothing.
fn client_config(trusted: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if trusted {
        roots
            .add(CertificateDer::from_pem_file(fixture("localhost.crt")).unwrap())
            .unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Sends one JSON-RPC request and returns the next reply.
async fn call<S>(ws: &mut WebSocketStream<S>, method: &str, params: Value) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    ws.send(Message::text(request.to_string())).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_with_a_trusted_certificate_calls_echo() {
    let server = TlsServer::start();
    let stream = server.tls(client_config(true), "localhost").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/ws", server.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let reply = call(&mut ws, "echo", json!({"over": "tls"})).await;
    assert_eq!(reply["result"], json!({"over": "tls"}), "{reply}");
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn https_healthz_answers() {
    let server = TlsServer::start();
    // By IP this time: the certificate names 127.0.0.1 too.
    let mut stream = server.tls(client_config(true), "127.0.0.1").await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    // The server may close without close_notify; what arrived is enough.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_the_handshake() {
    let server = TlsServer::start();
    let err = server
        .tls(client_config(false), "localhost")
        .await
        .expect_err("an untrusted certificate must fail the handshake");
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "unexpected error: {err}"
    );
    server.wait_for_log("TLS handshake failed");

    // Plain ws:// to a TLS port fails too, and neither failure stops the
    // server.
    let plain = format!("ws://{}/ws", server.addr);
    assert!(
        Client::try_connect(plain.into_client_request().unwrap())
            .await
            .is_err()
    );
    let stream = server.tls(client_config(true), "localhost").await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(
        call(&mut ws, "rpc.ping", Value::Null).await["result"],
        "pong"
    );
}

#[tokio::test]
async fn a_stalled_tls_handshake_does_not_hold_up_other_clients() {
    let server = TlsServer::start();
    // Connects and never says a word: its handshake waits in its own task.
    let _silent = TcpStream::connect(&server.addr).await.unwrap();
    let stream = server.tls(client_config(true), "localhost").await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(
        call(&mut ws, "echo", json!([1])).await["result"],
        json!([1])
    );
}

/// Runs `serve` with `args`, which must make it exit; returns its status
/// and log.
fn serve_must_exit(args: &[&str]) -> (ExitStatus, String) {
    let (mut cmd, _dirs) = serve_command(args);
    let mut child = cmd.spawn().expect("switchboard starts");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (status, log)
}

#[test]
fn bad_certificate_or_key_files_stop_serve_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let missing = dir.path().join("missing.crt");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let (cert, key, rsa_key) = (
        path(&fixture("localhost.crt")),
        path(&fixture("localhost.key")),
        path(&fixture("rsa.key")),
    );
    let (garbage, missing) = (path(&garbage), path(&missing));
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            &missing,
            &key,
            &missing,
            "could not read the TLS certificate file",
        ),
        (&garbage, &key, &garbage, "holds no certificate"),
        (&cert, &garbage, &garbage, "holds no private key"),
        (&cert, &cert, &cert, "holds no private key"),
        (&cert, &rsa_key, &rsa_key, "cannot be used together"),
    ];
    for (cert, key, named, says) in cases {
        let (status, log) = serve_must_exit(&["--tls-cert", cert, "--tls-key", key]);
        assert!(!status.success(), "cert {cert}, key {key}: {log}");
        assert!(log.contains(named), "the log does not name {named}:\n{log}");
        assert!(log.contains(says), "the log does not say {says:?}:\n{log}");
        assert!(!log.contains("listening on"), "{log}");
    }
    let (status, log) = serve_must_exit(&["--tls-cert", &cert]);
    assert!(!status.success(), "{log}");
    assert!(log.contains("tls_key"), "{log}");
}

// ---- trusted_proxies ----------------------------------------------------

/// Opens a connection with `headers` and returns the `remote_addr` the
/// plugins were told on connect (the auth-probe plugin records it).
async fn remote_addr_seen(server: &Server, headers: &[(&'static str, &str)]) -> String {
    let mut request = server.ws_url().into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .append(*name, HeaderValue::from_str(value).unwrap());
    }
    let mut client = Client::try_connect(request).await.unwrap();
    let conn = client.call("echo/whoami", Value::Null).await["result"]["conn"]
        .as_u64()
        .unwrap();
    let prefix = format!("connect {conn} - ");
    let start = Instant::now();
    loop {
        let events = client.call("probe/events", Value::Null).await["result"].clone();
        let connect = events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str()?.strip_prefix(&prefix))
            .next()
            .map(|detail| serde_json::from_str::<Value>(detail).unwrap());
        if let Some(detail) = connect {
            return detail["remote_addr"].as_str().unwrap().to_owned();
        }
        assert!(
            start.elapsed() < WAIT,
            "no connect event for {conn}: {events}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_client_address_comes_from_forwarding_headers_of_a_trusted_proxy_only() {
    let behind_proxy = ServerConfig::default()
        .plugins(&["auth_probe", "echo"])
        .arg("--trusted-proxies")
        .arg("10.0.0.0/8,127.0.0.1")
        .arg("--max-anonymous-per-address")
        .arg("1")
        .start();
    // The client wrote 1.1.1.1 itself; the proxy appended what it saw.
    let xff = [("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.5")];
    assert_eq!(remote_addr_seen(&behind_proxy, &xff).await, "203.0.113.7:0");
    let forwarded = [("forwarded", "for=\"[2001:db8::7]:4711\";proto=https")];
    assert_eq!(
        remote_addr_seen(&behind_proxy, &forwarded).await,
        "[2001:db8::7]:4711"
    );
    // No header: the proxy itself.
    assert!(
        remote_addr_seen(&behind_proxy, &[])
            .await
            .starts_with("127.0.0.1:")
    );
    // Anonymous connections are counted per client, not per proxy.
    let from = |ip: &str| {
        let mut request = behind_proxy.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .append("x-forwarded-for", HeaderValue::from_str(ip).unwrap());
        request
    };
    let _first = Client::try_connect(from("198.51.100.1")).await.unwrap();
    let _second = Client::try_connect(from("198.51.100.2")).await.unwrap();
    let again = Client::try_connect(from("198.51.100.1")).await;
    assert!(
        matches!(&again, Err(WsError::Http(r)) if r.status() == 503),
        "a second anonymous connection from 198.51.100.1: {again:?}"
    );

    // Trusting nobody (the default), or other proxies: the headers are
    // ignored and the TCP peer is the client.
    let direct = ServerConfig::default()
        .plugins(&["auth_probe", "echo"])
        .start();
    let not_trusted = ServerConfig::default()
        .plugins(&["auth_probe", "echo"])
        .arg("--trusted-proxies")
        .arg("10.0.0.0/8")
        .start();
    for server in [&direct, &not_trusted] {
        for headers in [&xff[..], &forwarded[..]] {
            let seen = remote_addr_seen(server, headers).await;
            assert!(seen.starts_with("127.0.0.1:"), "{seen}");
        }
    }
}

#[test]
fn a_trusted_proxy_that_is_not_an_address_is_refused_at_start() {
    let out = Command::new(binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--trusted-proxies",
            "proxy.example.com",
        ])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'proxy.example.com' is not an IP address or a CIDR range"),
        "{stderr}"
    );
}

// ---- heartbeats -----------------------------------------------------------

/// A client that completed the upgrade and then went silent (never reads,
/// never answers the ping) is dropped within `ping_interval_ms +
/// pong_timeout_ms`; a client that answers pings (any WebSocket library
/// does while it reads) stays.
#[tokio::test]
async fn a_silent_peer_is_pinged_then_dropped_and_a_live_one_stays() {
    use std::io::Read;
    let server = ServerConfig::default()
        .arg("--ping-interval-ms")
        .arg("300")
        .arg("--pong-timeout-ms")
        .arg("300")
        .start();
    let auth = format!("Authorization: Bearer {}", token("mute", 60));
    let (status, _, mut silent) =
        switchboard_tests::raw_upgrade(&server.addr, &[switchboard_tests::KEY_HEADER, &auth]);
    assert_eq!(status, 101);
    let mut live = server.connect_as("live").await;
    let opened = Instant::now();
    // The silent peer, read on a thread of its own: the ping arrives, then
    // the end of the stream.
    let silent_side = tokio::task::spawn_blocking(move || {
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match silent.read(&mut buf) {
                Ok(0) => return Ok((received, opened.elapsed())),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    });
    // Meanwhile a live client (busy) stays.
    while !silent_side.is_finished() {
        assert_eq!(live.call("rpc.ping", Value::Null).await["result"], "pong");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (received, dropped_after) = silent_side
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the silent peer was not dropped: {e}"));
    assert_eq!(
        received.first(),
        Some(&0x89),
        "a ping frame came first: {received:?}"
    );
    assert!(
        dropped_after < Duration::from_millis(2_000),
        "dropped after {dropped_after:?}"
    );
    // While it reads, even with nothing to say, it answers the pings.
    let idle_until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < idle_until {
        let _ = live.next_message(Duration::from_millis(100)).await;
    }
    assert_eq!(live.call("rpc.ping", Value::Null).await["result"], "pong");
    println!(
        "a silent peer was dropped {} ms after its upgrade (300 + 300 ms)",
        dropped_after.as_millis()
    );
}
