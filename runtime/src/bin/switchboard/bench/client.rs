//! Opening many benchmark connections: spread over loopback source
//! addresses (127.0.0.2, .3, ...) so more connections than one address has
//! ephemeral ports are possible, each optionally signed in with a token
//! minted from the server's secret.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use switchboard::auth::TokenMinter;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Loopback source addresses connections are spread over.
const SOURCES: usize = 250;

/// A benchmark client connection.
pub(crate) type BenchSocket = WebSocketStream<TcpStream>;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `ws://host:port/ws` (or `/` for the floor).
    pub(crate) url: String,
    /// Signs each connection in with a token for `bench-<n>`, if given.
    pub(crate) secret: Option<String>,
    /// Signs every connection in with this token (instead of minting).
    pub(crate) token: Option<String>,
}

impl Target {
    /// A token for connection number `n` (user `bench-<n>`), if the target
    /// has a secret.
    pub(crate) fn token_for(&self, n: usize) -> anyhow::Result<Option<String>> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        let Some(secret) = &self.secret else {
            return Ok(None);
        };
        let token = TokenMinter::hs256(secret.as_bytes())
            .mint_for(&format!("bench-{n}"), Duration::from_secs(3600))?;
        Ok(Some(token))
    }

    /// Opens connection number `n`.
    pub(crate) async fn connect(&self, n: usize) -> anyhow::Result<BenchSocket> {
        let mut url = self.url.clone();
        if let Some(token) = self.token_for(n)? {
            url.push_str(if url.contains('?') {
                "&token="
            } else {
                "?token="
            });
            url.push_str(&token);
        }
        let request = url.as_str().into_client_request()?;
        let host = request.uri().host().unwrap_or("127.0.0.1").to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let server: SocketAddr = format!("{host}:{port}").parse()?;
        let socket = TcpSocket::new_v4()?;
        if server.ip().is_loopback() {
            // Round-robin over 127.0.0.2 ..= 127.0.0.251: 250 times the
            // ephemeral ports of one address, so runs in a row (whose closed
            // connections linger in TIME_WAIT) and 100k connections fit.
            let octet = u8::try_from(2 + n % SOURCES).unwrap_or(2);
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)),
                0,
            ))?;
        }
        let stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config())).await?;
        Ok(ws)
    }
}

/// The generator's WebSocket settings. tungstenite zero-fills its read
/// buffer before every read, up to the buffer's size: with the default
/// (128 KiB) each read of a few frames cost a 128 KiB `memset`, which made
/// the generator, not the server, the limit of a fanout to 10,000 sockets.
/// 8 KiB holds a burst of replies; a larger message grows it while read.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}
