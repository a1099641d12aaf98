//! The browser chat (`examples/chat`) in real headless Chromium, driven
//! through chromedriver (WebDriver): two pages chat through the server;
//! one page's socket is cut by the server (an oversized frame gets it
//! closed with 1009) while the other keeps writing, and it reconnects and
//! shows every message it missed, once; a hot reload of the chat plugin in
//! the middle of the conversation loses nothing; the admin page lists
//! both connections. Screenshots go to `target/browser-test/`.
//!
//! `chromium` and `chromium-driver` must be installed (`.ci/deps`
//! installs them): without them this test fails, never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard_tests::{SECRET, Server, ServerConfig, plugin, token, workspace_root};

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start ({e}): the browser test needs chromium and \
                     chromium-driver; install them with `bash .ci/deps`"
                )
            });
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    /// A fresh headless browser (its own profile).
    async fn browser(&self, profile: &std::path::Path) -> Browser {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=900,700".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({"args": args, "binary": "/usr/bin/chromium"}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chat log's lines on `page`.
async fn log_lines(page: &Browser) -> Vec<String> {
    let mut lines = Vec::new();
    for item in page.find_all(Locator::Css("#log li")).await.unwrap() {
        lines.push(item.text().await.unwrap());
    }
    lines
}

/// Waits until `page`'s log has a line equal to `want`.
async fn wait_for_line(page: &Browser, want: &str) {
    let start = Instant::now();
    loop {
        if log_lines(page).await.iter().any(|l| l == want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never showed {want:?}; it shows {:?}",
            log_lines(page).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn say(page: &Browser, text: &str) {
    let input = page.find(Locator::Id("text")).await.unwrap();
    input.send_keys(text).await.unwrap();
    page.find(Locator::Css("#send button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn screenshot(page: &Browser, name: &str) {
    let dir = workspace_root().join("target").join("browser-test");
    std::fs::create_dir_all(&dir).unwrap();
    let png = page.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

fn chat_server() -> Server {
    ServerConfig::default()
        .plugins(&["chat", "echo"])
        .arg("--static-dir")
        .arg(
            workspace_root()
                .join("examples/chat/public")
                .to_str()
                .unwrap(),
        )
        .arg("--max-message-bytes")
        .arg("65536")
        .start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_chat_and_a_cut_page_gets_every_message_it_missed() {
    let _ = SECRET;
    let server = chat_server();
    let driver = Driver::start();
    let profiles = tempfile::tempdir().unwrap();
    let ann = driver.browser(&profiles.path().join("ann")).await;
    let bob = driver.browser(&profiles.path().join("bob")).await;
    let base = format!("http://{}/", server.addr);
    ann.goto(&format!("{base}#token={}", token("ann", 3600)))
        .await
        .unwrap();
    bob.goto(&format!("{base}#token={}", token("bob", 3600)))
        .await
        .unwrap();
    for page in [&ann, &bob] {
        wait_for_line(page, "you are in lobby").await;
    }
    say(&ann, "hello bob").await;
    wait_for_line(&bob, "ann: hello bob").await;
    say(&bob, "hi ann").await;
    wait_for_line(&ann, "bob: hi ann").await;
    screenshot(&bob, "1-chatting").await;

    // The server cuts Bob's socket (a frame over max_message_bytes gets
    // it closed with 1009); Ann goes on writing meanwhile, and the chat
    // plugin is hot-reloaded in the middle.
    bob.execute(
        "window.chat.socket.send('x'.repeat(200000)); return true;",
        vec![],
    )
    .await
    .unwrap();
    for i in 0..5 {
        say(&ann, &format!("while you were away {i}")).await;
    }
    let reloaded = std::fs::read(plugin("chat")).unwrap();
    let mut trailer = reloaded.clone();
    trailer.extend_from_slice(b"\0a new build of the same plugin");
    server.install("libchat.so", &write_temp(&trailer));
    wait_until_reloaded(&server);
    for i in 5..8 {
        say(&ann, &format!("while you were away {i}")).await;
    }
    for i in 0..8 {
        wait_for_line(&bob, &format!("ann: while you were away {i}")).await;
    }
    screenshot(&bob, "2-after-reconnect").await;
    let lines = log_lines(&bob).await;
    for i in 0..8 {
        let text = format!("ann: while you were away {i}");
        assert_eq!(
            lines.iter().filter(|l| **l == text).count(),
            1,
            "{text:?} not exactly once: {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("were missed")),
        "the page said messages were lost: {lines:?}"
    );
    // The admin page (this test reads it from the server's machine: no
    // token needed) lists both connections.
    ann.goto(&format!("{base}admin")).await.unwrap();
    let start = Instant::now();
    loop {
        let stats = ann
            .find(Locator::Id("stats"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if stats.starts_with("2\nconnections") || stats.starts_with("2 connections") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the admin page shows {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plugins = ann
        .find(Locator::Id("plugins"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(plugins.contains("chat/send"), "{plugins}");
    screenshot(&ann, "3-admin").await;
    ann.close().await.unwrap();
    bob.close().await.unwrap();
}

fn write_temp(bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("libchat-{}.so", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Waits until the server's log says the chat plugin's second generation
/// loaded.
fn wait_until_reloaded(server: &Server) {
    let start = Instant::now();
    while !server.log().lines().any(|l| {
        l.contains("plugin generation loaded")
            && l.contains("plugin=chat")
            && !l.contains("generation=1 ")
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
