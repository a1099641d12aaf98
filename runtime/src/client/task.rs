//! The connection task of a [`Client`]: one socket at a time, replaced
//! with backoff when it drops.

use super::{CallError, Client, ClientEvent, RoomMessage, lock};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// What the handle queues: a frame (with its call id, if a call's).
pub(super) type Queued = (Option<String>, String);

/// A queued frame that drops the socket instead of being sent.
pub(super) const DROP: &str = "\u{0}drop";

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

/// Keeps the client connected until it is closed.
pub(super) async fn run(
    url: String,
    client: Client,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    up: oneshot::Sender<()>,
) {
    let mut up = Some(up);
    let mut attempt: u32 = 0;
    let mut was_connected = false;
    while !client.stop.is_cancelled() {
        if let Ok((socket, _)) =
            tokio_tungstenite::connect_async(address(&url, &client).await).await
        {
            attempt = 0;
            let (mut sink, mut stream) = socket.split();
            let reconnected = was_connected;
            was_connected = true;
            if reconnected && !resume(&client, &mut sink).await {
                continue;
            }
            let _ = client.events.send(ClientEvent::Connected { reconnected });
            if let Some(up) = up.take() {
                let _ = up.send(());
            }
            loop {
                tokio::select! {
                    frame = queued.recv() => match frame {
                        Some((_, text)) if text == DROP => break,
                        Some((id, text)) => {
                            if let Some(id) = id
                                && let Some(entry) = lock(&client.shared).pending.get_mut(&id)
                            {
                                entry.sent = true;
                            }
                            if sink.send(Message::text(text)).await.is_err() {
                                break;
                            }
                        }
                        None => return,
                    },
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(text))) => heard(&client, text.as_str(), &mut sink).await,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                    () = client.stop.cancelled() => {
                        let _ = sink.close().await;
                        return;
                    }
                }
            }
            let _ = client.events.send(ClientEvent::Disconnected);
        }
        let delay = backoff(&client, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = client.stop.cancelled() => return,
        }
    }
}

/// The URL with a fresh token.
async fn address(url: &str, client: &Client) -> String {
    let token = match &client.options.token {
        Some(source) => source().await,
        None => None,
    };
    match token {
        Some(token) => {
            let join = if url.contains('?') { '&' } else { '?' };
            format!("{url}{join}token={token}")
        }
        None => url.to_owned(),
    }
}

/// A random delay between half and all of the attempt's ceiling.
fn backoff(client: &Client, attempt: u32) -> Duration {
    let ceiling = client
        .options
        .min_backoff
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(client.options.max_backoff);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    ceiling / 2 + ceiling / 2 * u32::from(byte[0]) / 255
}

/// After a reconnect: rejoins every room with where it left off, then
/// sends again the calls that got no reply on the lost socket.
async fn resume(client: &Client, sink: &mut Sink) -> bool {
    let (rejoins, resends) = {
        let shared = lock(&client.shared);
        let rejoins: Vec<String> = shared
            .rooms
            .iter()
            .filter_map(|(room, state)| rejoin_frame(room, state.offset, state.epoch.as_deref()))
            .collect();
        let resends: Vec<String> = shared
            .pending
            .values()
            .filter(|call| call.sent)
            .map(|call| call.frame.clone())
            .collect();
        (rejoins, resends)
    };
    for frame in rejoins.into_iter().chain(resends) {
        if sink.send(Message::text(frame)).await.is_err() {
            return false;
        }
    }
    true
}

/// `rpc.join` with `since` and `epoch`, answered under id `r:<room>`.
fn rejoin_frame(room: &str, offset: u64, epoch: Option<&str>) -> Option<String> {
    let epoch = epoch?;
    Some(
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": format!("r:{room}"),
            "method": "rpc.join",
            "params": {"room": room, "since": offset, "epoch": epoch},
        })
        .to_string(),
    )
}

/// One frame from the server.
async fn heard(client: &Client, text: &str, sink: &mut Sink) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let messages = match message {
        Value::Array(batch) => batch,
        one => vec![one],
    };
    for message in messages {
        dispatch(client, message, sink).await;
    }
}

async fn dispatch(client: &Client, message: Value, sink: &mut Sink) {
    match message["method"].as_str() {
        Some("rpc.message") => {
            let params = &message["params"];
            let (Some(room), Some(offset)) = (params["room"].as_str(), params["offset"].as_u64())
            else {
                return;
            };
            let mut shared = lock(&client.shared);
            if let Some(state) = shared.rooms.get_mut(room)
                && offset > state.offset
            {
                state.offset = offset;
                let _ = state.messages.send(RoomMessage {
                    room: room.to_owned(),
                    offset,
                    data: params["data"].clone(),
                });
            }
        }
        Some("rpc.event") => {
            let event = message["params"]["event"].as_str().unwrap_or("").to_owned();
            let data = message["params"]["data"].clone();
            if event == "room.gap"
                && let Some(room) = data["room"].as_str()
            {
                let frame = {
                    let shared = lock(&client.shared);
                    shared
                        .rooms
                        .get(room)
                        .and_then(|s| rejoin_frame(room, s.offset, s.epoch.as_deref()))
                };
                if let Some(frame) = frame {
                    let _ = sink.send(Message::text(frame)).await;
                }
            }
            let _ = client.events.send(ClientEvent::Event { event, data });
        }
        Some(method) => answer_server_call(client, method, &message),
        None => reply(client, &message),
    }
}

/// Runs the handler of one of the server's calls and queues its answer.
fn answer_server_call(client: &Client, method: &str, message: &Value) {
    let id = message["id"].clone();
    if id.is_null() {
        return;
    }
    let handler = lock(&client.shared).handlers.get(method).cloned();
    let outgoing = client.outgoing.clone();
    let params = message["params"].clone();
    let method = method.to_owned();
    tokio::spawn(async move {
        let answer = match handler {
            Some(handler) => match handler(params).await {
                Ok(result) => serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, text)) => {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": text}})
                }
            },
            None => {
                serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("this client does not handle '{method}'")}})
            }
        };
        let _ = outgoing.send((None, answer.to_string()));
    });
}

/// A reply: to a call, or to a rejoin.
fn reply(client: &Client, message: &Value) {
    let Some(id) = message["id"].as_str() else {
        return;
    };
    if let Some(room) = id.strip_prefix("r:") {
        let joined = &message["result"];
        let recovered = joined["recovered"].as_bool() != Some(false);
        {
            let mut shared = lock(&client.shared);
            let Some(state) = shared.rooms.get_mut(room) else {
                return;
            };
            state.epoch = joined["epoch"].as_str().map(str::to_owned);
            if !recovered {
                state.offset = joined["offset"].as_u64().unwrap_or(state.offset);
            }
        }
        let _ = client.events.send(ClientEvent::Recovered {
            room: room.to_owned(),
            recovered: recovered && message.get("error").is_none(),
        });
        return;
    }
    let Some(call) = lock(&client.shared).pending.remove(id) else {
        return;
    };
    let answer = match message.get("error") {
        Some(error) => Err(CallError::Rpc {
            code: error["code"].as_i64().unwrap_or(-32603),
            message: error["message"].as_str().unwrap_or("").to_owned(),
            data: error.get("data").cloned(),
        }),
        None => Ok(message["result"].clone()),
    };
    let _ = call.answer.send(answer);
}
