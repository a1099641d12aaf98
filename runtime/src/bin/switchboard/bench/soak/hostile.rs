//! The soak's hostile clients, a round of each kind every few seconds
//! while the load runs: an oversized frame (expect close 1009, or the
//! connection cut), a publish flood (expect -32004 refusals, then close
//! 1008), garbage (non-JSON, non-requests, binary: expect error replies
//! with protocol codes), and a slow reader that asks for megabytes of
//! replies and stops reading (expect close 4008, or the connection
//! dropped once writes stall).

use super::shared::Shared;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// How long one hostile client may take to be dealt with.
const DEADLINE: Duration = Duration::from_secs(30);

/// The kinds of hostile client.
const KINDS: [&str; 4] = ["oversized", "flood", "garbage", "slow-reader"];

/// How each kind of hostile client fared.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct HostileFigures {
    /// Per kind: (runs, runs dealt with as expected, the first that was not).
    pub(crate) kinds: BTreeMap<&'static str, (u64, u64, Option<String>)>,
}

/// How the server ended a hostile connection.
#[derive(Default)]
struct Ending {
    /// Its close code, if it sent a close frame.
    close: Option<u16>,
    /// Whether the connection ended at all within the deadline.
    ended: bool,
    /// Error codes of the replies read.
    codes: Vec<i64>,
    /// Successful replies read.
    results: u64,
}

/// Runs a round of every kind every `every` until the load ends.
pub(crate) async fn run(
    shared: Arc<Shared>,
    every: Duration,
    max_message_bytes: usize,
) -> HostileFigures {
    let mut figures = HostileFigures::default();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut round = 0usize;
    loop {
        ticker.tick().await;
        if Instant::now() >= shared.end {
            break;
        }
        let user = |kind: usize| shared.plan.conns + 1000 + round * KINDS.len() + kind;
        let outcomes = futures_util::future::join_all([
            Box::pin(oversized(&shared, user(0), max_message_bytes))
                as std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>,
            Box::pin(flood(&shared, user(1))),
            Box::pin(garbage(&shared, user(2))),
            Box::pin(slow_reader(&shared, user(3))),
        ])
        .await;
        for (kind, outcome) in KINDS.iter().zip(outcomes) {
            let entry = figures.kinds.entry(kind).or_default();
            entry.0 += 1;
            match outcome {
                Ok(()) => entry.1 += 1,
                Err(why) => {
                    entry.2.get_or_insert(why);
                }
            }
        }
        round += 1;
    }
    figures
}

/// Reads until the server ends the connection or `within` passes,
/// counting what it sent in the tally.
async fn read_to_end<S>(shared: &Shared, ws: &mut S, within: Duration) -> Ending
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut ending = Ending::default();
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return ending,
            Ok(Some(Ok(Message::Text(text)))) => {
                let reply: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if let Some(error) = reply.get("error") {
                    let code = error["code"].as_i64();
                    shared.tally.refusal(code, &text);
                    ending.codes.extend(code);
                } else if reply.get("result").is_some() {
                    ending.results += 1;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                shared.tally.close(code);
                ending.close = Some(code);
                ending.ended = true;
                return ending;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => {
                shared.tally.dropped.inc();
                ending.ended = true;
                return ending;
            }
        }
    }
}

impl std::fmt::Debug for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut codes = BTreeMap::new();
        for code in &self.codes {
            *codes.entry(*code).or_insert(0u64) += 1;
        }
        let ended = match (self.ended, self.close) {
            (_, Some(code)) => format!("close {code}"),
            (true, None) => "dropped with no close frame".to_owned(),
            (false, None) => "still open".to_owned(),
        };
        write!(
            f,
            "{ended} after {} results and errors {}",
            self.results,
            super::codes::describe(&codes)
        )
    }
}

/// A frame larger than the server's `max_message_bytes`.
async fn oversized(shared: &Shared, user: usize, max: usize) -> Result<(), String> {
    let mut ws = shared
        .target
        .connect(user)
        .await
        .map_err(|e| e.to_string())?;
    let frame = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"echo","params":{{"pad":"{}"}}}}"#,
        "x".repeat(max + 1024)
    );
    // The server may cut the connection while the frame is still going
    // out: a failed send is that, not a failure of the soak.
    let _ = ws.send(Message::text(frame)).await;
    let ending = read_to_end(shared, &mut ws, DEADLINE).await;
    match ending.close {
        Some(1009) | None if ending.ended => Ok(()),
        _ => Err(format!(
            "an oversized frame ended with {ending:?}, not close 1009"
        )),
    }
}

/// `rpc.publish` as fast as it goes, with no pause.
async fn flood(shared: &Shared, user: usize) -> Result<(), String> {
    let ws = shared
        .target
        .connect(user)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let join = r#"{"jsonrpc":"2.0","id":0,"method":"rpc.join","params":{"room":"soak-flood"}}"#;
    sink.send(Message::text(join))
        .await
        .map_err(|e| e.to_string())?;
    let writer = tokio::spawn(async move {
        for id in 1..=2000 {
            let publish = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"rpc.publish","params":{{"room":"soak-flood","data":{id}}}}}"#
            );
            if sink.send(Message::text(publish)).await.is_err() {
                break;
            }
        }
        sink
    });
    let ending = read_to_end(shared, &mut stream, DEADLINE).await;
    if let Ok(mut sink) = writer.await {
        let _ = sink.close().await;
    }
    if ending.codes.contains(&-32004) && ending.close == Some(1008) {
        Ok(())
    } else {
        Err(format!(
            "a publish flood ended with {ending:?}, not -32004 then close 1008 (the soak expects the server's default publish_rate)"
        ))
    }
}

/// Frames that are not JSON-RPC requests.
async fn garbage(shared: &Shared, user: usize) -> Result<(), String> {
    let mut ws = shared
        .target
        .connect(user)
        .await
        .map_err(|e| e.to_string())?;
    let frames = [
        Message::text("this is not JSON"),
        Message::text(r#"{"jsonrpc":"2.0"}"#),
        Message::text("[]"),
        Message::text(r#"{"jsonrpc":"2.0","id":1,"method":42}"#),
        Message::text("{\"jsonrpc\":\"2.0\",\"id\":"),
        Message::binary(vec![0xff, 0x00, 0x13, 0x37]),
    ];
    let mut sent = 0;
    'send: for _ in 0..5 {
        for frame in &frames {
            if ws.send(frame.clone()).await.is_err() {
                break 'send;
            }
            sent += 1;
        }
    }
    let _ = ws
        .send(Message::text(
            r#"{"jsonrpc":"2.0","id":"end","method":"rpc.ping"}"#,
        ))
        .await;
    let ending = read_to_end(shared, &mut ws, Duration::from_secs(3)).await;
    let _ = ws.close(None).await;
    let refused = !ending.codes.is_empty() || ending.close.is_some();
    if refused && ending.results <= 1 && sent > 0 {
        Ok(())
    } else {
        Err(format!("garbage was answered with {ending:?}"))
    }
}

/// Asks for megabytes of replies and does not read them.
async fn slow_reader(shared: &Shared, user: usize) -> Result<(), String> {
    let mut ws = shared
        .target
        .connect(user)
        .await
        .map_err(|e| e.to_string())?;
    let pad = "y".repeat(64 * 1024);
    let flood = async {
        for id in 0..400 {
            let call = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"echo","params":{{"pad":"{pad}"}}}}"#
            );
            if ws.send(Message::text(call)).await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DEADLINE, flood).await;
    // Not reading for a while: the server's queue for it fills up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ending = read_to_end(shared, &mut ws, DEADLINE).await;
    match ending.close {
        Some(4008) | None if ending.ended => Ok(()),
        _ => Err(format!(
            "a slow reader ended with {ending:?}, not close 4008 or a drop"
        )),
    }
}
