//! The `conns` scenario: opens N idle connections and, given the server's
//! pid, reports its resident memory per connection; optionally holds them
//! and checks each still answers.

use super::client::{BenchSocket, Target};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// How long every held connection gets to answer its ping.
const PING_DEADLINE: Duration = Duration::from_secs(30);

/// The server's resident memory in KiB, from `/proc/<pid>/status`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// What `conns` measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ConnsReport {
    /// Connections held.
    pub(crate) connections: usize,
    /// Server RSS before, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Server RSS with all connections open, KiB.
    pub(crate) rss_after_kib: Option<u64>,
    /// (after - before) / connections, bytes.
    pub(crate) bytes_per_connection: Option<u64>,
    /// Seconds to open them all.
    pub(crate) open_secs: f64,
    /// With `--hold`: how many answered a ping after the hold.
    pub(crate) alive_after_hold: Option<usize>,
}

/// Opens `count` connections, waits for the server to settle, measures.
pub(crate) async fn run(
    target: &Target,
    count: usize,
    pid: Option<u32>,
    hold: Option<Duration>,
) -> anyhow::Result<ConnsReport> {
    let before = pid.and_then(rss_kib);
    let started = std::time::Instant::now();
    // Each connection is read by a task of its own from the moment it is
    // open, so that the server's heartbeat pings get their pongs
    // (tungstenite answers a ping as it reads it): a connection that never
    // reads is one the server rightly drops after `ping_interval_ms` plus
    // `pong_timeout_ms`, however long opening the rest takes.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::with_capacity(count);
    for n in 0..count {
        readers.push(tokio::spawn(answer_heartbeats(
            target.connect(n).await?,
            stop.clone(),
        )));
        if n % 1000 == 999 {
            eprint!("\rconns: {} open", n + 1);
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    eprintln!("\rconns: {count} open in {open_secs:.1} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pid.and_then(rss_kib);
    let per = match (before, after) {
        (Some(b), Some(a)) if count > 0 => Some(a.saturating_sub(b) * 1024 / count as u64),
        _ => None,
    };
    if let Some(hold) = hold {
        eprintln!(
            "conns: holding {count} for {}",
            humantime::format_duration(hold)
        );
        tokio::time::sleep(hold).await;
    }
    stop.cancel();
    let mut sockets = Vec::with_capacity(count);
    for reader in readers {
        // A reader that panicked loses its connection: it counts as dead.
        if let Ok(socket) = reader.await {
            sockets.push(socket);
        }
    }
    let alive_after_hold = match hold {
        Some(_) => Some(count_answering(&mut sockets).await),
        None => None,
    };
    Ok(ConnsReport {
        connections: count,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: per,
        open_secs,
        alive_after_hold,
    })
}

/// Reads `socket` until `stop`, dropping what comes (pushes; pings are
/// answered by tungstenite as it reads them), then gives it back. A
/// connection that ended is given back as it is, for [`count_answering`]
/// to find.
async fn answer_heartbeats(
    mut socket: BenchSocket,
    stop: tokio_util::sync::CancellationToken,
) -> BenchSocket {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            received = socket.next() => {
                if !matches!(received, Some(Ok(_))) {
                    // Ended: nothing more to read.
                    stop.cancelled().await;
                    break;
                }
            }
        }
    }
    socket
}

/// Pings every connection (all sent before any answer is read) and counts
/// those that answer (a `pong`, or any reply from a server without
/// `rpc.ping`) before [`PING_DEADLINE`].
async fn count_answering(sockets: &mut [BenchSocket]) -> usize {
    const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"rpc.ping"}"#;
    let mut sent = Vec::with_capacity(sockets.len());
    for socket in sockets.iter_mut() {
        sent.push(socket.send(Message::text(PING)).await.is_ok());
    }
    let deadline = tokio::time::Instant::now() + PING_DEADLINE;
    let mut alive = 0;
    for (socket, sent) in sockets.iter_mut().zip(sent) {
        if !sent {
            continue;
        }
        loop {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Ok(Some(Ok(Message::Text(reply)))) if reply.contains(r#""id":1"#) => {
                    alive += 1;
                    break;
                }
                // Pushes (presence, token warnings) are not the answer.
                Ok(Some(Ok(_))) => continue,
                _ => break,
            }
        }
    }
    alive
}
