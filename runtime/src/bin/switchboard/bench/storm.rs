//! The reload storm's load: one continuous `rpc`-style load whose calls
//! count towards alternating windows, steady (no swaps) and storm (swaps
//! back to back), so that a drift of the machine during the run falls on
//! both alike instead of on whichever half ran second.
//!
//! Each pair of windows runs: steady for `window`; storm for `window`; a
//! gap that is not counted, until the swap in progress when the storm
//! window ended has finished and the retired build has had time to go.

use super::client::Target;
use super::cpu::CpuUse;
use super::stats::Latencies;
use super::{Report, Tally};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// The phase value while no window counts (warm-up and gaps).
const GAP: usize = usize::MAX;

/// Time after a storm window's last swap before the next steady window:
/// the retired build is closed by the server's sweep (every 20 ms).
const SETTLE: Duration = Duration::from_millis(150);

/// The load's shape.
#[derive(Debug, Clone)]
pub(crate) struct StormLoad {
    /// Connections.
    pub(crate) conns: usize,
    /// Calls in flight per connection.
    pub(crate) inflight: usize,
    /// The method called.
    pub(crate) method: String,
    /// Steady/storm window pairs.
    pub(crate) pairs: usize,
    /// Length of each window.
    pub(crate) window: Duration,
}

/// Asks the swapper to swap back to back until the instant given, and to
/// answer with the number of swaps done once its last one has finished.
pub(crate) type StormRequest = (Instant, oneshot::Sender<anyhow::Result<u64>>);

/// What the interleaved load measured.
#[derive(Debug, Serialize)]
pub(crate) struct StormReport {
    /// All steady windows together.
    pub(crate) steady: Report,
    /// All storm windows together.
    pub(crate) storm: Report,
    /// Calls per second in each steady window, in order.
    pub(crate) steady_windows: Vec<f64>,
    /// Calls per second in each storm window, in order.
    pub(crate) storm_windows: Vec<f64>,
    /// Swaps completed during the storm windows.
    pub(crate) swaps: u64,
}

/// Counts shared between the controller and the load's connections.
struct Shared {
    /// The window counting now (`2i` steady, `2i + 1` storm), or [`GAP`].
    phase: AtomicUsize,
    /// Calls completed in each window.
    per_window: Vec<AtomicU64>,
    done: AtomicBool,
}

/// Runs the load, driving the swapper through `swapper` in the storm
/// windows.
pub(crate) async fn run(
    target: &Target,
    load: &StormLoad,
    swapper: std::sync::mpsc::Sender<StormRequest>,
) -> anyhow::Result<StormReport> {
    let shared = Arc::new(Shared {
        phase: AtomicUsize::new(GAP),
        per_window: (0..2 * load.pairs).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicBool::new(false),
    });
    let mut tasks = Vec::with_capacity(load.conns);
    for n in 0..load.conns {
        let socket = target.connect(n).await?;
        tasks.push(tokio::spawn(connection(
            socket,
            load.clone(),
            Arc::clone(&shared),
        )));
    }
    // Warm-up, not counted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut lengths = vec![Duration::ZERO; 2 * load.pairs];
    let mut swaps = 0;
    for pair in 0..load.pairs {
        let (steady, storm) = (2 * pair, 2 * pair + 1);
        let started = Instant::now();
        shared.phase.store(steady, Ordering::SeqCst);
        tokio::time::sleep(load.window).await;
        let switched = Instant::now();
        shared.phase.store(storm, Ordering::SeqCst);
        lengths[steady] = switched - started;
        let (answer, answered) = oneshot::channel();
        swapper
            .send((switched + load.window, answer))
            .map_err(|_| anyhow::anyhow!("the swapper thread is gone"))?;
        tokio::time::sleep_until((switched + load.window).into()).await;
        shared.phase.store(GAP, Ordering::SeqCst);
        lengths[storm] = switched.elapsed();
        swaps += answered
            .await
            .map_err(|_| anyhow::anyhow!("the swapper thread is gone"))??;
        eprint!(
            "\rreload storm: {} of {} window pairs",
            pair + 1,
            load.pairs
        );
        tokio::time::sleep(SETTLE).await;
    }
    eprintln!();
    shared.done.store(true, Ordering::SeqCst);
    let (mut latencies, mut errors) = ([Latencies::default(), Latencies::default()], [0, 0]);
    for task in tasks {
        let (l, e) = task.await??;
        for kind in 0..2 {
            latencies[kind].merge(&l[kind]);
            errors[kind] += e[kind];
        }
    }
    let rates = |kind: usize| -> Vec<f64> {
        (kind..2 * load.pairs)
            .step_by(2)
            .map(|w| shared.per_window[w].load(Ordering::Relaxed) as f64 / lengths[w].as_secs_f64())
            .collect()
    };
    let total = |kind: usize| -> Duration { lengths.iter().skip(kind).step_by(2).sum() };
    let [steady, storm] = latencies;
    Ok(StormReport {
        steady_windows: rates(0),
        storm_windows: rates(1),
        steady: Report::new(
            "rpc",
            "calls/s",
            Tally {
                latencies: steady,
                errors: errors[0],
                first_error: None,
            },
            total(0),
            CpuUse::default(),
        ),
        storm: Report::new(
            "rpc",
            "calls/s",
            Tally {
                latencies: storm,
                errors: errors[1],
                first_error: None,
            },
            total(1),
            CpuUse::default(),
        ),
        swaps,
    })
}

/// One connection of the load: `inflight` calls outstanding until the run
/// is done; each completion counts towards the window it completed in.
/// Returns latencies and errors for (steady, storm).
async fn connection(
    mut ws: super::client::BenchSocket,
    load: StormLoad,
    shared: Arc<Shared>,
) -> anyhow::Result<([Latencies; 2], [u64; 2])> {
    let method = serde_json::to_string(&load.method)?;
    let frame = |id: u64| {
        Message::text(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":{method},"params":{{}}}}"#
        ))
    };
    let mut latencies = [Latencies::default(), Latencies::default()];
    let mut errors = [0u64; 2];
    let mut sent: HashMap<u64, Instant> = HashMap::with_capacity(load.inflight * 2);
    let mut next_id = 0u64;
    for _ in 0..load.inflight {
        sent.insert(next_id, Instant::now());
        ws.feed(frame(next_id)).await?;
        next_id += 1;
    }
    ws.flush().await?;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        if shared.done.load(Ordering::Relaxed) {
            break;
        }
        let reply: serde_json::Value = serde_json::from_str(&text)?;
        let Some(started) = reply["id"].as_u64().and_then(|id| sent.remove(&id)) else {
            continue;
        };
        let window = shared.phase.load(Ordering::Relaxed);
        if let Some(count) = shared.per_window.get(window) {
            let kind = window % 2;
            if reply.get("error").is_some() {
                errors[kind] += 1;
            }
            latencies[kind].record(started.elapsed().as_micros() as u64);
            count.fetch_add(1, Ordering::Relaxed);
        }
        sent.insert(next_id, Instant::now());
        ws.send(frame(next_id)).await?;
        next_id += 1;
    }
    let _ = ws.close(None).await;
    Ok((latencies, errors))
}
