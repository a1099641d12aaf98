//! The `soak` scenario: a bounded run of mixed load against a real server
//! that checks, at the end, that nothing was lost.
//!
//! Thousands of signed-in connections ([`member`]) call an inline action
//! (`echo`) and one run on the action pool (`echo/sleep`), join, publish
//! to and leave a set of rooms (`soak-<n>`); every few seconds a share of
//! them drop at once and reconnect, rejoining with the last offset seen
//! ([`membership`] checks each replay); a plugin file is hot-reloaded
//! every few seconds ([`reloads`]); hostile clients come and go
//! ([`hostile`]); and the server's RSS is sampled every second ([`rss`]).
//! At the end, after every call is answered, the checks of [`report`].

pub(crate) mod codes;
pub(crate) mod hostile;
pub(crate) mod ledger;
pub(crate) mod member;
pub(crate) mod membership;
pub(crate) mod ops;
pub(crate) mod reloads;
pub(crate) mod replies;
pub(crate) mod report;
pub(crate) mod rss;
pub(crate) mod shared;
pub(crate) mod tally;

use crate::bench::client::{BenchSocket, Target};
use futures_util::{SinkExt, StreamExt};
use report::SoakReport;
use shared::{LoadPlan, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Connections opened at once while the soak starts.
const CONNECTING: usize = 32;

/// The `soak` scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct SoakScenario {
    /// How long the load runs.
    pub(crate) duration: Duration,
    /// The well-behaved load.
    pub(crate) plan: LoadPlan,
    /// Rooms.
    pub(crate) rooms: usize,
    /// A reconnect storm this often.
    pub(crate) storm_every: Duration,
    /// Hot reloads, if any.
    pub(crate) reload: Option<reloads::ReloadPlan>,
    /// A round of hostile clients this often.
    pub(crate) hostile_every: Duration,
    /// The server's `max_message_bytes`.
    pub(crate) max_message_bytes: usize,
    /// The RSS slope's bound: percent of RSS per minute ...
    pub(crate) rss_slope_percent: f64,
    /// ... or MiB per minute, whichever is larger.
    pub(crate) rss_slope_mib: f64,
    /// The server's process id (RSS, and that it still runs).
    pub(crate) pid: Option<u32>,
}

/// Runs the soak against `target`.
pub(crate) async fn run(target: &Target, scenario: &SoakScenario) -> anyhow::Result<SoakReport> {
    let conns = scenario.plan.conns;
    let sockets = connect_all(target, conns).await?;
    let start = Instant::now();
    let end = start + scenario.duration;
    let shared = Arc::new(Shared::new(
        target.clone(),
        scenario.plan.clone(),
        scenario.rooms.max(2),
        end,
    ));
    let (storm_tx, storms) = tokio::sync::watch::channel(0u64);
    let mut members = Vec::with_capacity(conns);
    for (n, ws) in sockets {
        members.push(tokio::spawn(member::run(
            n,
            ws,
            Arc::clone(&shared),
            storms.clone(),
        )));
    }
    let storm_every = scenario.storm_every;
    let storm_task = tokio::spawn(async move {
        let mut storm = 0;
        while Instant::now() + storm_every < end {
            tokio::time::sleep(storm_every).await;
            storm += 1;
            let _ = storm_tx.send(storm);
        }
        // Held until the end: a closed channel would wake every member.
        tokio::time::sleep_until(end.into()).await;
        drop(storm_tx);
    });
    let reloader = scenario.reload.clone().map(|plan| {
        let target = target.clone();
        tokio::spawn(async move { reloads::run(&target, plan, conns + 999, end).await })
    });
    let hostile = tokio::spawn(hostile::run(
        Arc::clone(&shared),
        scenario.hostile_every,
        scenario.max_message_bytes,
    ));
    let sampler = scenario.pid.map(|pid| rss::Samples::start(pid, end));
    let ticker = tokio::spawn(progress(Arc::clone(&shared), start));
    for member in members {
        member.await?;
    }
    ticker.abort();
    eprintln!();
    storm_task.await?;
    let reloads = match reloader {
        Some(task) => Some(task.await??),
        None => None,
    };
    let hostile = hostile.await?;
    let rss = match sampler {
        Some((samples, task)) => {
            task.await?;
            samples.figures(scenario.rss_slope_percent, scenario.rss_slope_mib)
        }
        None => None,
    };
    let alive = still_answers(target, conns + 998, scenario.pid).await;
    Ok(SoakReport::new(
        &shared.tally,
        conns,
        scenario.duration.as_secs_f64(),
        alive,
        reloads,
        hostile,
        rss,
    ))
}

/// Opens connections `0..count`, a few at a time.
async fn connect_all(target: &Target, count: usize) -> anyhow::Result<Vec<(usize, BenchSocket)>> {
    let mut opened = futures_util::stream::iter(0..count)
        .map(|n| async move { target.connect(n).await.map(|ws| (n, ws)) })
        .buffer_unordered(CONNECTING);
    let mut sockets = Vec::with_capacity(count);
    while let Some(socket) = opened.next().await {
        sockets.push(socket?);
        if sockets.len() % 500 == 0 {
            eprint!("\rsoak: {} of {count} connections open", sockets.len());
        }
    }
    eprintln!("\rsoak: {count} connections open          ");
    Ok(sockets)
}

/// Prints the soak's progress every second.
async fn progress(shared: Arc<Shared>, start: Instant) {
    let tally = &shared.tally;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        eprint!(
            "\rsoak: {:>4} s  calls {}  publishes {}  deliveries {}  reconnects {}   ",
            start.elapsed().as_secs(),
            tally.calls_ok.get(),
            tally.acked.get(),
            tally.deliveries.get(),
            tally.reconnects.get()
        );
    }
}

/// Whether the server still answers a new connection (and, given its
/// pid, still runs).
async fn still_answers(target: &Target, user: usize, pid: Option<u32>) -> Result<(), String> {
    if let Some(pid) = pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.is_empty() || status.contains("State:\tZ") {
            return Err(format!("the server (pid {pid}) is gone"));
        }
    }
    let check = async {
        let mut ws = target.connect(user).await.map_err(|e| e.to_string())?;
        let calls = [
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"rpc.ping"}"#,
                r#""pong""#,
            ),
            (
                r#"{"jsonrpc":"2.0","id":2,"method":"echo","params":{"alive":true}}"#,
                r#"{"alive":true}"#,
            ),
        ];
        for (call, wanted) in calls {
            ws.send(Message::text(call))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(reply))) if reply.contains(r#""id""#) => {
                        if !reply.contains(wanted) {
                            return Err(format!("{call} was answered {reply}"));
                        }
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => return Err(format!("{call} was not answered: {other:?}")),
                }
            }
        }
        let _ = ws.close(None).await;
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), check)
        .await
        .unwrap_or_else(|_| Err("no answer within 20 s".to_owned()))
}
