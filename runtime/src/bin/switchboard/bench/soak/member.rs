//! A well-behaved connection of the soak: it calls, joins, publishes and
//! leaves at its share of the rate, checks every reply and every room
//! message ([`super::membership`]), drops and reconnects in the storms
//! it is picked for (rejoining its rooms with recovery), and at the end
//! has every call answered and every acknowledged message received.

use super::membership::Membership;
use super::shared::{CATCH_UP, DRAIN, Rng, Shared, mix};
use crate::bench::client::BenchSocket;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A request waiting for its reply.
#[derive(Debug)]
pub(super) enum Pending {
    /// `echo` with these params (answered with them).
    Echo(Value),
    /// `echo/sleep {ms}` (answered `{"slept": ms}`).
    Sleep(u64),
    /// `rpc.publish` of publish `id` to a room.
    Publish { room: usize, id: u64 },
    /// `rpc.join`.
    Join(usize),
    /// `rpc.leave`.
    Leave(usize),
}

/// A made-up epoch sent on some rejoins: the answer must be
/// `recovered: false`, with nothing replayed.
pub(super) const STALE_EPOCH: &str = "soak-made-up-epoch";

/// One connection's state.
#[derive(Debug)]
pub(super) struct Member {
    /// Its number (it signs in as `bench-<n>`).
    pub(super) n: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) rng: Rng,
    /// Rooms by index.
    pub(super) rooms: HashMap<usize, Membership>,
    /// Requests by id.
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) next_id: u64,
    /// Sequence of this connection's publishes and calls.
    pub(super) seq: u64,
}

/// How a step of the loop ended.
enum Step {
    Go,
    /// The socket is gone (closed by the server, or dropped): reconnect.
    Lost,
}

/// Runs connection `n` until the end of the soak and its checks.
pub(crate) async fn run(
    n: usize,
    ws: BenchSocket,
    shared: Arc<Shared>,
    mut storms: watch::Receiver<u64>,
) {
    let mut member = Member {
        n,
        rng: Rng::new(n as u64),
        shared: Arc::clone(&shared),
        rooms: HashMap::new(),
        pending: HashMap::new(),
        next_id: 1,
        seq: 0,
    };
    let mut ws = Some(ws);
    if let Some(socket) = ws.as_mut()
        && member.first_joins(socket).await.is_err()
    {
        ws = member.reconnect(None).await;
    }
    let period = shared.plan.period();
    let phase = Duration::from_micros(member.rng.below(period.as_micros() as u64 + 1));
    let mut ticker = tokio::time::interval_at((Instant::now() + phase).into(), period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut storms_open = true;
    while let Some(socket) = ws.as_mut() {
        if Instant::now() >= shared.end {
            break;
        }
        let step = tokio::select! {
            changed = storms.changed(), if storms_open => {
                storms_open = changed.is_ok();
                let storm = *storms.borrow_and_update();
                if storms_open && member.in_storm(storm) { Step::Lost } else { Step::Go }
            }
            _ = ticker.tick() => match member.act(socket).await {
                Ok(()) => Step::Go,
                Err(_) => member.lost(None),
            },
            message = socket.next() => member.on_frame(message),
        };
        if let Step::Lost = step {
            let old = ws.take();
            ws = member.reconnect(old).await;
        }
    }
    match ws {
        Some(mut socket) => {
            member.finish(&mut socket).await;
            let _ = socket.close(None).await;
        }
        None => shared.drained(),
    }
}

impl Member {
    /// Joins the connection's first two rooms.
    async fn first_joins(
        &mut self,
        ws: &mut BenchSocket,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let rooms = self.shared.ledger.len() as u64;
        let first = self.n as u64 % rooms.max(1);
        let second =
            (first + 1 + mix(self.n as u64) % rooms.saturating_sub(1).max(1)) % rooms.max(1);
        for room in [first, second] {
            if !self.rooms.contains_key(&(room as usize)) {
                self.join(ws, room as usize, None, false).await?;
            }
        }
        Ok(())
    }

    /// Whether this connection drops in storm number `storm`.
    fn in_storm(&self, storm: u64) -> bool {
        storm > 0 && mix((self.n as u64) << 20 ^ storm) % 100 < self.shared.plan.storm_percent
    }

    /// A frame (or the end of the stream) from the server.
    fn on_frame(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Step {
        match message {
            Some(Ok(Message::Text(text))) => {
                self.on_text(&text);
                Step::Go
            }
            Some(Ok(Message::Close(frame))) => {
                self.lost(Some(frame.map_or(1005, |f| u16::from(f.code))))
            }
            Some(Ok(_)) => Step::Go,
            Some(Err(_)) | None => self.lost(None),
        }
    }

    /// The server closed this connection (with `code`) or it dropped.
    fn lost(&mut self, code: Option<u16>) -> Step {
        let tally = &self.shared.tally;
        tally.members_closed.inc();
        match code {
            Some(code) => tally.close(code),
            None => tally.dropped.inc(),
        }
        Step::Lost
    }

    /// Drops `old` (if any) at once, reconnects after a short pause, and
    /// rejoins every room it was joined to with the last offset it saw
    /// (one rejoin in ten with a made-up epoch). `None` when it could not
    /// reconnect (counted as unanswered).
    async fn reconnect(&mut self, old: Option<BenchSocket>) -> Option<BenchSocket> {
        drop(old);
        let resume: Vec<(usize, (u64, String))> = self
            .rooms
            .iter()
            .filter_map(|(room, m)| m.resume_point().map(|p| (*room, p)))
            .collect();
        self.rooms.clear();
        let abandoned = self
            .pending
            .drain()
            .filter(|(_, p)| matches!(p, Pending::Echo(_) | Pending::Sleep(_)))
            .count();
        self.shared.tally.abandoned.add(abandoned as u64);
        tokio::time::sleep(Duration::from_millis(self.rng.below(500))).await;
        let mut ws = None;
        for attempt in 0..20u64 {
            match self.shared.target.connect(self.n).await {
                Ok(socket) => {
                    ws = Some(socket);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await,
            }
        }
        let Some(mut socket) = ws else {
            let n = self.n;
            self.shared
                .tally
                .unanswered
                .record(|| format!("connection {n} could not reconnect"));
            return None;
        };
        self.shared.tally.reconnects.inc();
        for (room, (since, epoch)) in resume {
            let stale = self.rng.below(10) == 0;
            if stale {
                self.shared.tally.stale_epochs.inc();
            }
            let epoch = if stale { STALE_EPOCH.to_owned() } else { epoch };
            if self
                .join(&mut socket, room, Some((since, epoch)), stale)
                .await
                .is_err()
            {
                return Box::pin(self.reconnect(Some(socket))).await;
            }
        }
        Some(socket)
    }

    /// After the load: every request answered (within [`DRAIN`]); then,
    /// once every connection is there (or [`CATCH_UP`] has passed), every
    /// message acknowledged in a room it is still in received.
    async fn finish(&mut self, ws: &mut BenchSocket) {
        let end = self.shared.end;
        let drained = self
            .read_until(ws, end + DRAIN, |m| m.pending.is_empty())
            .await;
        if !drained {
            let (n, left) = (self.n, self.pending.len());
            if left > 0 {
                self.shared.tally.unanswered.record(|| {
                    format!("connection {n}: {left} requests unanswered {DRAIN:?} after the end")
                });
            }
        }
        self.shared.drained();
        let shared = Arc::clone(&self.shared);
        let everyone = self
            .read_until(ws, end + DRAIN + CATCH_UP, |_| shared.all_drained())
            .await;
        if !everyone {
            let n = self.n;
            self.shared.tally.unanswered.record(|| {
                format!("connection {n}: the other connections were not done {CATCH_UP:?} after the drain, so its rooms were not checked")
            });
            return;
        }
        let wanted: Vec<(usize, u64)> = self
            .rooms
            .iter()
            .filter(|(_, m)| m.is_joined())
            .map(|(room, _)| (*room, self.shared.ledger.acked_max(*room)))
            .collect();
        let caught_up = |m: &Member| {
            wanted
                .iter()
                .all(|(room, max)| m.rooms.get(room).is_none_or(|r| r.last() >= *max))
        };
        let deadline = Instant::now() + CATCH_UP;
        if !self.read_until(ws, deadline, caught_up).await {
            for (room, max) in &wanted {
                if let Some(m) = self.rooms.get(room)
                    && m.last() < *max
                {
                    let (n, last) = (self.n, m.last());
                    self.shared.tally.lost.record(|| {
                        format!("connection {n} stayed in soak-{room} but received up to offset {last} of {max} acknowledged")
                    });
                }
            }
        }
    }

    /// Reads and handles frames until `done` holds (`true`) or `deadline`
    /// passes or the socket ends (`false`).
    async fn read_until(
        &mut self,
        ws: &mut BenchSocket,
        deadline: Instant,
        done: impl Fn(&Member) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if wait.is_zero() {
                return false;
            }
            match tokio::time::timeout(wait, ws.next()).await {
                Err(_) => {}
                Ok(message) => {
                    if let Step::Lost = self.on_frame(message) {
                        return false;
                    }
                }
            }
        }
    }
}
