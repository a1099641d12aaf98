//! The `rpc` scenario: N connections, P calls in flight on each, for a
//! duration; reports calls per second and latency percentiles.

use super::client::Target;
use super::stats::Latencies;
use super::{Progress, Report};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The `rpc` scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct RpcScenario {
    /// Connections.
    pub(crate) conns: usize,
    /// Calls in flight per connection.
    pub(crate) inflight: usize,
    /// The method called.
    pub(crate) method: String,
    /// Bytes of payload in each call's params.
    pub(crate) payload: usize,
    /// How long to measure (after a 1 s warm-up).
    pub(crate) duration: Duration,
}

/// Runs the scenario against `target`.
pub(crate) async fn run(target: &Target, scenario: &RpcScenario) -> anyhow::Result<Report> {
    let mut sockets = Vec::with_capacity(scenario.conns);
    for n in 0..scenario.conns {
        sockets.push(target.connect(n).await?);
    }
    let params = serde_json::json!({"pad": "x".repeat(scenario.payload)}).to_string();
    let method = serde_json::to_string(&scenario.method)?;
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + scenario.duration;
    let progress = Arc::new(Progress::default());
    let ticker = progress.start_ticker("rpc", "calls/s", end);
    let mut tasks = Vec::new();
    for ws in sockets {
        let (params, method, progress) = (params.clone(), method.clone(), Arc::clone(&progress));
        let inflight = scenario.inflight;
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut latencies = Latencies::default();
            let (mut errors, mut next_id) = (0u64, 0u64);
            let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(inflight * 2);
            let frame = |id: u64| {
                Message::text(format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{params}}}"#
                ))
            };
            for _ in 0..inflight {
                sent.insert(next_id, Instant::now());
                ws.feed(frame(next_id)).await?;
                next_id += 1;
            }
            ws.flush().await?;
            while let Some(message) = ws.next().await {
                let Message::Text(text) = message? else {
                    continue;
                };
                let reply: serde_json::Value = serde_json::from_str(&text)?;
                let Some(started) = reply["id"].as_u64().and_then(|id| sent.remove(&id)) else {
                    continue;
                };
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= warmup_end {
                    if reply.get("error").is_some() {
                        errors += 1;
                    }
                    latencies.record(started.elapsed().as_micros() as u64);
                    progress.add(1);
                }
                sent.insert(next_id, Instant::now());
                ws.send(frame(next_id)).await?;
                next_id += 1;
            }
            let _ = ws.close(None).await;
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut latencies = Latencies::default();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await??;
        latencies.merge(&l);
        errors += e;
    }
    ticker.abort();
    Ok(Report::new(
        "rpc",
        "calls/s",
        latencies,
        errors,
        scenario.duration,
    ))
}
