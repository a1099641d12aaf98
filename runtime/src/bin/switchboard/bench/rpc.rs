//! The `rpc` scenario: N connections, P calls in flight on each, for a
//! duration; reports successful calls per second, latency percentiles,
//! and (with the server's pid) calls per server CPU-second.
//!
//! Built not to be the bottleneck: every call's frame is serialized once
//! before the run (each of a connection's P slots has its own id), a reply
//! is read by its id alone (parsed in full only when it is an error), and
//! the next calls are written in bursts (fed as replies come, flushed
//! once per burst). Connections are spread over the runtime's threads.

use super::client::Target;
use super::{Progress, Report, Tally};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The `rpc` scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct RpcScenario {
    /// Connections.
    pub(crate) conns: usize,
    /// Calls in flight per connection.
    pub(crate) inflight: usize,
    /// The method called.
    pub(crate) method: String,
    /// The params of each call (JSON); `None`: `{"pad": "<payload x>"}`.
    pub(crate) params: Option<String>,
    /// Bytes of padding in the default params.
    pub(crate) payload: usize,
    /// How long to measure (after a 1 s warm-up).
    pub(crate) duration: Duration,
    /// The server's process id, to measure its CPU.
    pub(crate) pids: Vec<u32>,
}

/// The id of a reply (a number), read without parsing the rest.
fn reply_id(text: &str) -> Option<usize> {
    let at = text.find(r#""id":"#)? + 5;
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Whether a reply is an error: its top level has `error` (checked in
/// full only when the text mentions one).
fn is_error(text: &str) -> bool {
    text.contains(r#""error""#)
        && serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|reply| reply.get("error").is_some())
}

/// Runs the scenario against `target`.
pub(crate) async fn run(target: &Target, scenario: &RpcScenario) -> anyhow::Result<Report> {
    let mut sockets = Vec::with_capacity(scenario.conns);
    for n in 0..scenario.conns {
        sockets.push(target.connect(n).await?);
    }
    let params = match &scenario.params {
        Some(params) => {
            serde_json::from_str::<serde_json::Value>(params)
                .map_err(|e| anyhow::anyhow!("--params is not JSON: {e}"))?;
            params.clone()
        }
        None => serde_json::json!({"pad": "x".repeat(scenario.payload)}).to_string(),
    };
    let method = serde_json::to_string(&scenario.method)?;
    // One frame per slot, made once: slot `i` always uses id `i`.
    let frames: Arc<Vec<Utf8Bytes>> = Arc::new(
        (0..scenario.inflight.max(1))
            .map(|id| {
                Utf8Bytes::from(format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{params}}}"#
                ))
            })
            .collect(),
    );
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + scenario.duration;
    let progress = Arc::new(Progress::default());
    let ticker = progress.start_ticker("rpc", "calls/s", end);
    let cpu = super::cpu::measure(scenario.pids.clone(), warmup_end, end);
    let mut tasks = Vec::new();
    for ws in sockets {
        let (frames, progress) = (Arc::clone(&frames), Arc::clone(&progress));
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut tally = Tally::default();
            let mut sent_at = vec![Instant::now(); frames.len()];
            for (slot, frame) in frames.iter().enumerate() {
                sent_at[slot] = Instant::now();
                ws.feed(Message::Text(frame.clone())).await?;
            }
            ws.flush().await?;
            'run: while let Some(first) = ws.next().await {
                let mut next = Some(first);
                // Every reply ready now, each answered with its slot's next
                // call; then one flush for the burst.
                while let Some(message) = next.take() {
                    let Message::Text(text) = message? else {
                        next = ws.next().now_or_never().flatten();
                        continue;
                    };
                    let Some(slot) = reply_id(&text).filter(|s| *s < frames.len()) else {
                        next = ws.next().now_or_never().flatten();
                        continue;
                    };
                    let now = Instant::now();
                    if now >= end {
                        break 'run;
                    }
                    if now >= warmup_end {
                        if is_error(&text) {
                            tally.error(&text);
                        } else {
                            tally
                                .latencies
                                .record(now.duration_since(sent_at[slot]).as_micros() as u64);
                            progress.add(1);
                        }
                    }
                    sent_at[slot] = now;
                    ws.feed(Message::Text(frames[slot].clone())).await?;
                    next = ws.next().now_or_never().flatten();
                }
                ws.flush().await?;
            }
            let _ = ws.close(None).await;
            anyhow::Ok(tally)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await??);
    }
    ticker.abort();
    let cpu = cpu.await.unwrap_or_default();
    Ok(Report::new("rpc", "calls/s", tally, scenario.duration, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_by_their_id_and_errors_found() {
        assert_eq!(
            reply_id(r#"{"jsonrpc":"2.0","id":17,"result":"x"}"#),
            Some(17)
        );
        assert_eq!(reply_id(r#"{"id": 3,"jsonrpc":"2.0"}"#), Some(3));
        assert_eq!(reply_id(r#"{"jsonrpc":"2.0","method":"rpc.event"}"#), None);
        assert!(is_error(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"no"}}"#
        ));
        assert!(!is_error(
            r#"{"jsonrpc":"2.0","id":1,"result":{"error":1}}"#
        ));
    }
}
