//! The floor: the least a tokio-tungstenite JSON-RPC server can do, for
//! `switchboard bench` to measure Switchboard against in the same run.
//! Not part of the product: no plugins, no auth, no limits, no history.
//!
//! It answers any method by echoing its params, `rpc.join {room}` by
//! joining, and `rpc.publish {room, data}` by queueing one shared
//! `rpc.message` frame for every member. Frames are parsed once for the
//! envelope, params are spliced raw, writes are fed and flushed once per
//! burst: the same hot-path rules Switchboard follows, and nothing else.
//!
//! Run: `switchboard-floor 127.0.0.1:7900` (WebSocket on any path).

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Rooms = Arc<Mutex<HashMap<String, Vec<mpsc::Sender<Utf8Bytes>>>>>;

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: &'a str,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RoomParams<'a> {
    #[serde(borrow)]
    room: &'a str,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7900".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("floor listening on ws://{}/", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let offsets = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let (rooms, offsets) = (Arc::clone(&rooms), Arc::clone(&offsets));
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(8192);
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            else {
                return;
            };
            serve(ws, rooms, offsets).await;
        });
    }
}

async fn serve(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    rooms: Rooms,
    offsets: Arc<std::sync::atomic::AtomicU64>,
) {
    use futures_util::FutureExt;
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(1024);
    let mut unflushed = 0usize;
    loop {
        // With writes buffered, handle what is ready at once, and flush as
        // soon as nothing is (or after 256 frames): one flush per burst.
        let incoming = if unflushed > 0 {
            if unflushed < 256
                && let Ok(frame) = rx.try_recv()
            {
                if ws.feed(Message::Text(frame)).await.is_err() {
                    return;
                }
                unflushed += 1;
                continue;
            }
            match (unflushed < 256)
                .then(|| ws.next().now_or_never())
                .flatten()
            {
                Some(incoming) => incoming,
                None => {
                    if ws.flush().await.is_err() {
                        return;
                    }
                    unflushed = 0;
                    continue;
                }
            }
        } else {
            tokio::select! {
                biased;
                Some(frame) = rx.recv() => {
                    if ws.feed(Message::Text(frame)).await.is_err() {
                        return;
                    }
                    unflushed += 1;
                    continue;
                }
                incoming = ws.next() => incoming,
            }
        };
        match incoming {
            Some(Ok(Message::Text(text))) => {
                if let Some(reply) = handle(&text, &rooms, &offsets, &tx) {
                    if ws.feed(Message::text(reply)).await.is_err() {
                        return;
                    }
                    unflushed += 1;
                }
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return,
        }
    }
}

/// One frame: the reply to send, if it is a request.
fn handle(
    text: &str,
    rooms: &Rooms,
    offsets: &std::sync::atomic::AtomicU64,
    tx: &mpsc::Sender<Utf8Bytes>,
) -> Option<String> {
    let envelope = serde_json::from_str::<Envelope<'_>>(text).ok()?;
    let params = envelope.params.map_or("null", |p| p.get());
    let result: String = match envelope.method {
        "rpc.join" | "rpc.publish" => {
            let p = serde_json::from_str::<RoomParams<'_>>(params).ok()?;
            let mut rooms = rooms.lock().unwrap_or_else(PoisonError::into_inner);
            if envelope.method == "rpc.join" {
                rooms.entry(p.room.to_owned()).or_default().push(tx.clone());
                format!(r#"{{"room":"{}"}}"#, p.room)
            } else {
                let offset = offsets.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let data = p.data.map_or("null", |d| d.get());
                let frame = Utf8Bytes::from(format!(
                    r#"{{"jsonrpc":"2.0","method":"rpc.message","params":{{"room":"{}","offset":{offset},"data":{data}}}}}"#,
                    p.room
                ));
                for member in rooms.get(p.room).into_iter().flatten() {
                    let _ = member.try_send(frame.clone());
                }
                format!(r#"{{"offset":{offset}}}"#)
            }
        }
        "rpc.ping" => "\"pong\"".to_owned(),
        _ => params.to_owned(),
    };
    let id = envelope.id?;
    Some(format!(
        r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#,
        id.get()
    ))
}
