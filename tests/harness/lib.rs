//! The black-box test harness: builds the server and plugins with cargo,
//! starts the real `switchboard` binary on a free port with a folder of
//! plugins, and talks to it over real WebSockets and HTTP.
//!
//! Nothing here reaches into the server's code: everything goes through
//! the binary's command line, its log, and its sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod redis;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The secret every test server uses unless a test says otherwise.
pub const SECRET: &str = "black-box-test-secret-0123456789";

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Every package the tests load, built once per test binary.
const PACKAGES: &[&str] = &[
    "switchboard",
    "echo",
    "kv",
    "chat",
    "example-hello-action",
    "future-abi",
    "legacy-layout",
    "path-thief",
    "not-a-plugin",
    "auth-probe",
    "raw-rogue",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `cargo build` for the binary and every plugin (a no-op when they
/// are fresh) and returns the folder holding the artifacts.
pub fn artifacts() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .arg("build")
            .arg("--quiet");
        for p in PACKAGES {
            cmd.arg("-p").arg(p);
        }
        let status = cmd.status().expect("cargo runs");
        assert!(
            status.success(),
            "cargo build of the server and plugins failed"
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"));
        target.join("debug")
    })
}

/// The `switchboard` binary.
pub fn binary() -> PathBuf {
    artifacts().join("switchboard")
}

/// A build of the `reload-probe` test plugin with the given `PROBE_*`
/// variables (see its docs), copied out of cargo's folder under `name` so
/// that the next variant's build does not replace it. Built once per name
/// per test binary; builds of different variants take turns.
pub fn probe_variant(name: &str, vars: &[(&str, &str)]) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    artifacts();
    // Test binaries may run at once (each in its own process): the build
    // of one variant and its copy must not interleave with another's, or
    // one could copy the other's artifact. A file lock spans processes.
    let dir = artifacts().join("probe-variants");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".build.lock")).unwrap();
    lock.lock().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "reload-probe"]);
    for var in ["PROBE_VERSION", "PROBE_CTOR", "PROBE_INIT", "PROBE_RESTORE"] {
        let value = vars.iter().find(|(k, _)| *k == var).map_or("", |(_, v)| v);
        cmd.env(var, value);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(
        status.success(),
        "cargo build of reload-probe variant {name} failed"
    );
    let path = dir.join(format!("{name}.{}", std::env::consts::DLL_EXTENSION));
    let staged = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::copy(
        artifacts().join(format!(
            "libreload_probe.{}",
            std::env::consts::DLL_EXTENSION
        )),
        &staged,
    )
    .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    drop(lock);
    built.insert(name.to_owned(), path.clone());
    path
}

/// A plugin library cargo built, by library name (e.g. `echo`, `kv`).
pub fn plugin(lib: &str) -> PathBuf {
    let path = artifacts().join(format!("lib{lib}.{}", std::env::consts::DLL_EXTENSION));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub plugins: Vec<String>,
    pub files: Vec<(String, Vec<u8>)>,
    pub args: Vec<String>,
    pub secret: Option<String>,
    /// Extra environment for the server; `None` removes the variable.
    pub env: Vec<(String, Option<String>)>,
    /// Serve this folder instead of a fresh temporary one.
    pub actions: Option<PathBuf>,
    /// Use this shadow base (`--shadow-dir`) instead of a fresh temporary
    /// one; it outlives the server.
    pub shadow: Option<PathBuf>,
    /// A command the server is started through (e.g. `prlimit
    /// --nofile=512 --`), which must exec it in place.
    pub wrapper: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            plugins: vec!["echo".into(), "kv".into()],
            files: Vec::new(),
            args: Vec::new(),
            secret: Some(SECRET.into()),
            env: Vec::new(),
            actions: None,
            shadow: None,
            wrapper: Vec::new(),
        }
    }
}

impl ServerConfig {
    pub fn plugins(mut self, plugins: &[&str]) -> Self {
        self.plugins = plugins.iter().map(|p| p.to_string()).collect();
        self
    }
    pub fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        self.files.push((name.into(), bytes.to_vec()));
        self
    }
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
    /// Sets (`Some`) or removes (`None`) an environment variable of the server.
    pub fn env(mut self, key: &str, value: Option<&str>) -> Self {
        self.env.push((key.into(), value.map(str::to_owned)));
        self
    }
    /// Serves `folder` as the actions folder (plugins and files are still
    /// copied into the temporary one, which is then unused).
    pub fn actions_folder(mut self, folder: &Path) -> Self {
        self.actions = Some(folder.to_path_buf());
        self
    }
    /// Passes `base` as `--shadow-dir` instead of a fresh temporary folder
    /// (servers given the same `base` share it; it is not removed when the
    /// server is dropped). The server copies plugins into `<base>/<pid>/`.
    pub fn shadow_base(mut self, base: &Path) -> Self {
        self.shadow = Some(base.to_path_buf());
        self
    }
    /// Copies a plugin file (any path) into the actions folder under `name`.
    pub fn plugin_file(mut self, name: &str, from: &Path) -> Self {
        self.files.push((name.into(), std::fs::read(from).unwrap()));
        self
    }
    /// Starts the server through `command` (which execs it in place).
    pub fn wrapper(mut self, command: &[&str]) -> Self {
        self.wrapper = command.iter().map(|c| c.to_string()).collect();
        self
    }
    pub fn no_secret(mut self) -> Self {
        self.secret = None;
        self
    }
    pub fn start(self) -> Server {
        Server::start(self)
    }
}

/// A running `switchboard serve`, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    pub actions_dir: tempfile::TempDir,
    /// The folder the server really serves: [`ServerConfig::actions_folder`]
    /// if one was given, else `actions_dir`.
    served: PathBuf,
    _shadow_dir: tempfile::TempDir,
    /// The server's `XDG_STATE_HOME`, where a server with no secret keeps
    /// its development secret (never the real user's).
    state_home: tempfile::TempDir,
}

fn collect(
    stream: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
    ready: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(rest)) = (&ready, line.split("listening on http://").nth(1)) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
            let mut log = into.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

impl Server {
    pub fn start(config: ServerConfig) -> Server {
        let actions_dir = tempfile::tempdir().unwrap();
        let shadow_dir = tempfile::tempdir().unwrap();
        let state_home = tempfile::tempdir().unwrap();
        for lib in &config.plugins {
            let source = plugin(lib);
            std::fs::copy(
                &source,
                actions_dir.path().join(source.file_name().unwrap()),
            )
            .unwrap();
        }
        for (name, bytes) in &config.files {
            std::fs::write(actions_dir.path().join(name), bytes).unwrap();
        }
        let mut cmd = match config.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.arg("serve");
        if !config.args.iter().any(|a| a == "--listen") {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        cmd.arg("--actions")
            .arg(config.actions.as_deref().unwrap_or(actions_dir.path()))
            .arg("--shadow-dir")
            .arg(config.shadow.as_deref().unwrap_or(shadow_dir.path()))
            .args(&config.args)
            .env(
                "RUST_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env_remove("SWITCHBOARD_CONFIG")
            .env("XDG_STATE_HOME", state_home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(secret) = &config.secret {
            // Through the environment, as the README says to: a flag is
            // visible to every local user in the process list.
            cmd.env("SWITCHBOARD_JWT_SECRET", secret);
        }
        for (key, value) in &config.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let mut child = cmd.spawn().expect("switchboard starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        collect(child.stderr.take().unwrap(), Arc::clone(&stderr), Some(tx));
        collect(child.stdout.take().unwrap(), Arc::clone(&stdout), None);
        let Ok(addr) = rx.recv_timeout(WAIT) else {
            let _ = child.kill();
            panic!("server did not start; its log:\n{}", stderr.lock().unwrap());
        };
        let served = config
            .actions
            .clone()
            .unwrap_or_else(|| actions_dir.path().to_path_buf());
        Server {
            child,
            addr,
            stderr,
            stdout,
            actions_dir,
            served,
            _shadow_dir: shadow_dir,
            state_home,
        }
    }

    /// Puts `from`'s content in the actions folder the server serves as
    /// `name` the way a deploy should (see [`install_into`]).
    pub fn install(&self, name: &str, from: &Path) {
        install_into(&self.served, name, from);
    }

    /// The path of `name` in the actions folder the server serves.
    pub fn action_file(&self, name: &str) -> PathBuf {
        self.served.join(name)
    }

    /// The `XDG_STATE_HOME` the server was started with (where its
    /// development secret is, when it has no secret configured).
    pub fn state_home(&self) -> &Path {
        self.state_home.path()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle` (or fails after [`WAIT`]).
    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < WAIT,
                "log never contained {needle:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until stdout contains `needle` and returns it all.
    pub fn wait_for_stdout(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let out = self.stdout();
            if out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed() < WAIT,
                "stdout never contained {needle:?}; stdout:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Anonymous connection.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connection signed in with a fresh token for `user`.
    pub async fn connect_as(&self, user: &str) -> Client {
        let token = token(user, 3600);
        Client::connect(&format!("{}?token={token}", self.ws_url())).await
    }

    /// Plain HTTP GET; returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_request(
            &self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
    }

    /// HTTP `method path` with `body` (JSON), presenting `bearer` as an
    /// `Authorization: Bearer` token if given; returns (status, body).
    pub fn http_with(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        http_request(
            &self.addr,
            &format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// One call of the HTTP API (`POST /api`) with `admin_token`; its
    /// reply object.
    pub fn api(&self, admin_token: &str, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let (status, reply) = self.http_with("POST", "/api", Some(admin_token), &body.to_string());
        assert_eq!(status, 200, "{method}: {reply}");
        serde_json::from_str(&reply).unwrap()
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.http_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Sends SIGTERM (and returns at once).
    pub fn signal_term(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < WAIT, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Kills the process with SIGKILL (no cleanup of any kind can run)
    /// and reaps it; returns how it ended.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts `from`'s content in `folder` as `name` the way a deploy should:
/// written beside it under a name the server ignores, then renamed into
/// place (one event, never a partial file).
pub fn install_into(folder: &Path, name: &str, from: &Path) {
    let staged = folder.join(format!(".{name}.staged"));
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, folder.join(name)).unwrap();
}

/// Sends a raw HTTP/1.1 request and returns (status, body).
pub fn http_request(addr: &str, request: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// An HS256 token signed with [`SECRET`], valid for `ttl_secs` (negative:
/// expired that long ago).
pub fn token(sub: &str, ttl_secs: i64) -> String {
    token_with(SECRET, json!({"sub": sub, "exp": now() + ttl_secs}))
}

/// A token with arbitrary claims, signed HS256 with `secret`.
pub fn token_with(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A WebSocket client speaking JSON-RPC.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url.into_client_request().unwrap())
            .await
            .expect("WebSocket handshake succeeds")
    }

    pub async fn try_connect(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("handshake in time")?;
        Ok(Client { ws })
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// Sends every message in one write (fed, then flushed once), so the
    /// server receives them together, as a busy client's burst.
    pub async fn send_burst(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.ws.feed(message).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    pub async fn send(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a request with `id` and no wait.
    pub async fn request(&mut self, id: impl Into<Value>, method: &str, params: Value) {
        let mut req = json!({"jsonrpc": "2.0", "id": id.into(), "method": method});
        if !params.is_null() {
            req["params"] = params;
        }
        self.send(&req).await;
    }

    /// Sends a request; `false` when the connection is gone.
    pub async fn try_request(&mut self, id: impl Into<Value>, method: &str, params: Value) -> bool {
        let req = json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params});
        self.ws.send(Message::text(req.to_string())).await.is_ok()
    }

    /// Sends a request and returns its reply, which must be the next frame
    /// that is not a push or a server call (those are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = json!(format!("call-{method}"));
        self.request(id.clone(), method, params).await;
        let (reply, _) = self.recv_until(|v| v.get("method").is_none()).await;
        assert_eq!(reply["id"], id, "unexpected frame: {reply}");
        reply
    }

    /// Reads frames until one satisfies `want`, returning it; the frames
    /// skipped are returned too, in order.
    pub async fn recv_until(&mut self, want: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.recv().await;
            if want(&frame) {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
    }

    /// The next text frame, parsed (the server's heartbeat pings, which
    /// tungstenite answers as it reads, are skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next message of any kind, or `None` when the stream ends or
    /// nothing arrives within `within`.
    pub async fn next_message(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            _ => None,
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next_message(WAIT).await {
                Some(Message::Close(Some(frame))) => return frame.code.into(),
                Some(Message::Close(None)) => return 1005,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The error code of a reply, if it is an error.
pub fn error_code(reply: &Value) -> Option<i64> {
    reply["error"]["code"].as_i64()
}

/// A signed-in connection to `server` subscribed to `actions.changed`.
pub async fn control(server: &Server) -> Client {
    let mut client = server.connect_as("control").await;
    let reply = client
        .call("rpc.subscribe", json!({"event": "actions.changed"}))
        .await;
    assert_eq!(reply["result"]["subscribed"], true, "{reply}");
    client
}

/// Waits on `control` (see [`control`]) for the `actions.changed` push
/// about a file named `name`; returns its data.
pub async fn wait_changed(control: &mut Client, name: &str) -> Value {
    let (push, _) = control
        .recv_until(|m| {
            m["method"] == "rpc.event"
                && m["params"]["event"] == "actions.changed"
                && m["params"]["data"]["file"]
                    .as_str()
                    .is_some_and(|f| f.ends_with(name))
        })
        .await;
    push["params"]["data"].clone()
}

/// The reload probe's `probe/version` answer on `client`.
pub async fn identity(client: &mut Client) -> Value {
    let reply = client.call("probe/version", json!({})).await;
    assert!(reply.get("error").is_none(), "{reply}");
    reply["result"].clone()
}

/// Waits until `done` holds (or fails after [`WAIT`], saying `what`).
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A WebSocket upgrade request sent over a raw TCP socket, with `headers`
/// (each `Name: value`) after the usual ones. Returns the status, the
/// response head and body read so far, and the socket.
pub fn raw_upgrade(addr: &str, headers: &[&str]) -> (u16, String, std::net::TcpStream) {
    raw_upgrade_to(addr, "/ws", headers)
}

/// [`raw_upgrade`] to `path` (which may carry a query).
pub fn raw_upgrade_to(
    addr: &str,
    path: &str,
    headers: &[&str],
) -> (u16, String, std::net::TcpStream) {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the end of the head: the frames after it are the
    // caller's to read.
    while !response.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => response.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&response).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut text = head;
    if status != 101 {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        text.push_str(&body);
    }
    (status, text, stream)
}

/// A valid `Sec-WebSocket-Key` header.
pub const KEY_HEADER: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
