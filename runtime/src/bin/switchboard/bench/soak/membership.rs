//! One connection's membership of one room, checked message by message:
//! messages arrive once each, in offset order, with no gap, from the
//! offset the join answered; a rejoin with `since` replays exactly the
//! missed offsets (`recovered: true`) or nothing (`recovered: false`);
//! and a leave is answered only after every publish acknowledged before
//! it was sent.

/// Where the membership is.
#[derive(Debug)]
enum Phase {
    /// `rpc.join` sent; messages are held until its result.
    Joining {
        /// The offset asked to recover from.
        since: Option<u64>,
        /// The epoch asked with was made up (must not recover).
        stale: bool,
        /// (offset, publish id) received before the result.
        held: Vec<(u64, u64)>,
    },
    /// Joined: messages are live.
    Joined,
    /// `rpc.leave` sent, when publishes were acknowledged up to
    /// `must_reach`.
    Leaving { must_reach: u64 },
}

/// What one step found.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Messages taken in order: (offset, publish id).
    pub(crate) delivered: Vec<(u64, u64)>,
    /// Broken delivery promises.
    pub(crate) lost: Vec<String>,
    /// Inexact recoveries.
    pub(crate) bad_recovery: Vec<String>,
    /// The join's answer to `since`: `Some(recovered)`.
    pub(crate) recovery: Option<bool>,
}

/// A connection's membership of a room.
#[derive(Debug)]
pub(crate) struct Membership {
    phase: Phase,
    /// The last offset received in order (or the join's offset).
    last: u64,
    /// The room's epoch, from the join's result.
    epoch: String,
}

impl Membership {
    /// A join sent now: fresh (`since` none), or recovering from
    /// `(offset, epoch)` (`stale`: the epoch sent was made up).
    pub(crate) fn joining(since: Option<(u64, String)>, stale: bool) -> Membership {
        let (since, epoch) = match since {
            Some((offset, epoch)) => (Some(offset), epoch),
            None => (None, String::new()),
        };
        Membership {
            phase: Phase::Joining {
                since,
                stale,
                held: Vec::new(),
            },
            last: 0,
            epoch,
        }
    }

    /// Whether the join has been answered and no leave sent.
    pub(crate) fn is_joined(&self) -> bool {
        matches!(self.phase, Phase::Joined)
    }

    /// The last offset received in order and the epoch, to recover from
    /// after a reconnect (only while joined).
    pub(crate) fn resume_point(&self) -> Option<(u64, String)> {
        self.is_joined().then(|| (self.last, self.epoch.clone()))
    }

    /// The last offset received in order.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// A room message at `offset` carrying publish `id`.
    pub(crate) fn message(&mut self, offset: u64, id: u64) -> Findings {
        let mut found = Findings::default();
        match &mut self.phase {
            Phase::Joining { held, .. } => held.push((offset, id)),
            Phase::Joined | Phase::Leaving { .. } => self.live(offset, id, &mut found),
        }
        found
    }

    fn live(&mut self, offset: u64, id: u64, found: &mut Findings) {
        if offset == self.last + 1 {
            self.last = offset;
            found.delivered.push((offset, id));
        } else if offset <= self.last {
            found.lost.push(format!(
                "offset {offset} arrived after offset {} (a duplicate or out of order)",
                self.last
            ));
        } else {
            found.lost.push(format!(
                "offsets {}..={} never arrived (offset {offset} came after {})",
                self.last + 1,
                offset - 1,
                self.last
            ));
            self.last = offset;
            found.delivered.push((offset, id));
        }
    }

    /// The join's result: the room's `offset` and `epoch`, and
    /// `recovered` if it said.
    pub(crate) fn joined(&mut self, offset: u64, epoch: &str, recovered: Option<bool>) -> Findings {
        let mut found = Findings::default();
        let Phase::Joining { since, stale, held } =
            std::mem::replace(&mut self.phase, Phase::Joined)
        else {
            return found;
        };
        let (replayed, live): (Vec<_>, Vec<_>) = held.into_iter().partition(|(o, _)| *o <= offset);
        match (since, recovered) {
            (Some(since), Some(true)) => {
                if stale {
                    found.bad_recovery.push(format!(
                        "recovered: true for a made-up epoch (since {since})"
                    ));
                }
                let got: Vec<u64> = replayed.iter().map(|(o, _)| *o).collect();
                let wanted: Vec<u64> = (since + 1..=offset).collect();
                if got != wanted {
                    found.bad_recovery.push(format!(
                        "recovered: true from {since} to {offset}, but {} of {} missed messages replayed (first {:?})",
                        got.len(),
                        wanted.len(),
                        got.first()
                    ));
                }
                found.delivered.extend(replayed);
                found.recovery = Some(true);
            }
            (Some(since), other) => {
                if other.is_none() {
                    found
                        .bad_recovery
                        .push(format!("a join with since {since} did not say recovered"));
                }
                if !replayed.is_empty() {
                    found.bad_recovery.push(format!(
                        "recovered: false, but {} messages at or before the join's offset {offset} arrived",
                        replayed.len()
                    ));
                }
                found.recovery = Some(false);
            }
            (None, _) => {
                if !replayed.is_empty() {
                    found.lost.push(format!(
                        "{} messages at or before the join's offset {offset} arrived after a fresh join",
                        replayed.len()
                    ));
                }
            }
        }
        self.last = offset;
        self.epoch = epoch.to_owned();
        for (o, id) in live {
            self.live(o, id, &mut found);
        }
        found
    }

    /// A leave sent, when publishes were acknowledged up to `acked_max`.
    pub(crate) fn leaving(&mut self, acked_max: u64) {
        self.phase = Phase::Leaving {
            must_reach: acked_max,
        };
    }

    /// The leave's result: every publish acknowledged before it was sent
    /// must have arrived.
    pub(crate) fn left(&self) -> Option<String> {
        match self.phase {
            Phase::Leaving { must_reach } if self.last < must_reach => Some(format!(
                "left at offset {} though publishes were acknowledged up to {must_reach} before the leave",
                self.last
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_messages_must_follow_each_other() {
        let mut m = Membership::joining(None, false);
        assert!(
            m.message(6, 1).delivered.is_empty(),
            "held until the result"
        );
        let found = m.joined(5, "e", None);
        assert_eq!(found.delivered, vec![(6, 1)]);
        assert!(found.lost.is_empty());
        assert!(m.message(7, 2).lost.is_empty());
        assert_eq!(m.message(9, 3).lost.len(), 1, "a gap");
        assert_eq!(m.message(9, 3).lost.len(), 1, "a duplicate");
        assert_eq!(m.resume_point(), Some((9, "e".to_owned())));
    }

    #[test]
    fn a_recovery_replays_exactly_the_missed_offsets() {
        let mut m = Membership::joining(Some((3, "e".into())), false);
        for o in 4..=6 {
            m.message(o, o);
        }
        let found = m.joined(6, "e", Some(true));
        assert!(found.bad_recovery.is_empty(), "{found:?}");
        assert_eq!(found.delivered.len(), 3);
        let mut short = Membership::joining(Some((3, "e".into())), false);
        short.message(5, 5);
        assert_eq!(short.joined(6, "e", Some(true)).bad_recovery.len(), 1);
        let mut replayed = Membership::joining(Some((3, "x".into())), true);
        replayed.message(4, 4);
        assert_eq!(replayed.joined(6, "e", Some(false)).bad_recovery.len(), 1);
        let mut lied = Membership::joining(Some((6, "x".into())), true);
        assert_eq!(lied.joined(6, "e", Some(true)).bad_recovery.len(), 1);
    }

    #[test]
    fn a_leave_must_come_after_every_acknowledged_publish() {
        let mut m = Membership::joining(None, false);
        m.joined(10, "e", None);
        m.message(11, 1);
        m.leaving(12);
        assert!(m.left().is_some());
        m.message(12, 2);
        assert!(m.left().is_none());
    }
}
