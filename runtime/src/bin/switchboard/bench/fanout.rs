//! The `fanout` scenario: R rooms of S subscribers each, one publisher per
//! room publishing at a total rate; reports deliveries per second (at the
//! subscribers) and the latency from publish to delivery. Subscribers may
//! be spread over several nodes of a cluster (`--subscriber-url`).

use super::client::Target;
use super::{Progress, Report, Tally};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The `fanout` scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct FanoutScenario {
    /// Rooms.
    pub(crate) rooms: usize,
    /// Subscribers per room.
    pub(crate) subscribers: usize,
    /// Messages per second, over all rooms.
    pub(crate) rate: u64,
    /// Bytes of padding in each message.
    pub(crate) payload: usize,
    /// How long to measure (after a 1 s warm-up).
    pub(crate) duration: Duration,
    /// Where subscribers connect, round-robin (other nodes of a cluster);
    /// empty: the target's URL, as the publishers.
    pub(crate) subscriber_urls: Vec<String>,
    /// The server's process id, to measure its CPU.
    pub(crate) pids: Vec<u32>,
}

fn join(room: usize) -> Message {
    Message::text(format!(
        r#"{{"jsonrpc":"2.0","id":"j","method":"rpc.join","params":{{"room":"bench-{room}"}}}}"#
    ))
}

/// Reads until the reply with id "j" (the join) arrives.
async fn joined(ws: &mut super::client::BenchSocket) -> anyhow::Result<()> {
    while let Some(message) = ws.next().await {
        if let Message::Text(text) = message?
            && text.contains(r#""id":"j""#)
        {
            anyhow::ensure!(text.contains("result"), "join refused: {text}");
            return Ok(());
        }
    }
    anyhow::bail!("the connection closed before the join was answered")
}

/// Runs the scenario against `target`.
pub(crate) async fn run(target: &Target, scenario: &FanoutScenario) -> anyhow::Result<Report> {
    let progress = Arc::new(Progress::default());
    let mut subscribers = Vec::new();
    let mut n = 0;
    let subscriber_targets: Vec<Target> = if scenario.subscriber_urls.is_empty() {
        vec![target.clone()]
    } else {
        scenario
            .subscriber_urls
            .iter()
            .map(|url| Target {
                url: url.clone(),
                ..target.clone()
            })
            .collect()
    };
    for room in 0..scenario.rooms {
        for i in 0..scenario.subscribers {
            let mut ws = subscriber_targets[i % subscriber_targets.len()]
                .connect(n)
                .await?;
            n += 1;
            ws.send(join(room)).await?;
            joined(&mut ws).await?;
            subscribers.push(ws);
        }
    }
    let mut publishers = Vec::new();
    for room in 0..scenario.rooms {
        let mut ws = target.connect(n).await?;
        n += 1;
        ws.send(join(room)).await?;
        joined(&mut ws).await?;
        publishers.push((room, ws));
    }
    // The clock starts once every subscriber has joined: connecting
    // thousands takes seconds, more against a slower server, and must
    // not eat into the measured window.
    let origin = Instant::now();
    let warmup_end = origin + Duration::from_secs(1);
    let end = warmup_end + scenario.duration;
    let ticker = progress.start_ticker("fanout", "deliveries/s", end);
    let cpu = super::cpu::measure(scenario.pids.clone(), warmup_end, end);
    let mut tasks = Vec::new();
    for ws in subscribers {
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut tally = Tally::default();
            loop {
                let Ok(Some(message)) = tokio::time::timeout_at(end.into(), ws.next()).await else {
                    break;
                };
                let Message::Text(text) = message? else {
                    continue;
                };
                // {"...","data":{"t":<micros since origin>,...}}
                let Some(at) = text.find(r#""t":"#) else {
                    continue;
                };
                let digits: String = text[at + 4..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let Ok(sent) = digits.parse::<u64>() else {
                    continue;
                };
                let now = Instant::now();
                if now >= warmup_end {
                    let now_us = now.duration_since(origin).as_micros() as u64;
                    tally.latencies.record(now_us.saturating_sub(sent));
                    progress.add(1);
                }
            }
            let _ = ws.close(None).await;
            anyhow::Ok(tally)
        }));
    }
    let per_room = (scenario.rate as f64 / scenario.rooms as f64).max(0.001);
    let pad = "x".repeat(scenario.payload);
    for (room, ws) in publishers {
        let pad = pad.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            // Replies are read for errors (a refused publish: the server's
            // publish_rate, a room bound); our own messages are dropped.
            let drain = tokio::spawn(async move {
                let mut tally = Tally::default();
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message
                        && text.contains(r#""id":"p""#)
                        && text.contains(r#""error""#)
                        && Instant::now() >= warmup_end
                        && Instant::now() < end
                    {
                        tally.error(&text);
                    }
                }
                tally
            });
            let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / per_room));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < end {
                every.tick().await;
                let t = Instant::now().duration_since(origin).as_micros();
                let frame = format!(
                    r#"{{"jsonrpc":"2.0","id":"p","method":"rpc.publish","params":{{"room":"bench-{room}","data":{{"t":{t},"pad":"{pad}"}}}}}}"#
                );
                sink.send(Message::text(frame)).await?;
            }
            // The last replies, then the errors among them.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = sink.close().await;
            let tally = tokio::time::timeout(Duration::from_secs(2), drain)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            anyhow::Ok(tally)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await??);
    }
    ticker.abort();
    let cpu = cpu.await.unwrap_or_default();
    Ok(Report::new(
        "fanout",
        "deliveries/s",
        tally,
        scenario.duration,
        cpu,
    ))
}
