//! What every client of the soak shares: where to connect, the plan of
//! the load, the deadlines, the tally and the rooms' ledger.

use super::ledger::Ledger;
use super::tally::SoakTally;
use crate::bench::client::Target;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The well-behaved load's shape.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    /// Connections.
    pub(crate) conns: usize,
    /// Operations per second over all connections.
    pub(crate) rate: u64,
    /// Share of the connections each reconnect storm drops, in percent.
    pub(crate) storm_percent: u64,
}

impl LoadPlan {
    /// The time between one connection's operations.
    pub(crate) fn period(&self) -> Duration {
        Duration::from_secs_f64(self.conns.max(1) as f64 / self.rate.max(1) as f64)
    }
}

/// Shared by the soak's clients.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Where to connect.
    pub(crate) target: Target,
    /// The load's shape.
    pub(crate) plan: LoadPlan,
    /// What the clients count.
    pub(crate) tally: SoakTally,
    /// The rooms' ledger.
    pub(crate) ledger: Ledger,
    /// When the load stops (then the drain and the checks).
    pub(crate) end: Instant,
    /// Connections that have not yet had every call answered after `end`.
    draining: AtomicUsize,
}

/// How long after `end` the connections get to have their calls answered.
pub(crate) const DRAIN: Duration = Duration::from_secs(15);

/// How long after that they get to receive every acknowledged message.
pub(crate) const CATCH_UP: Duration = Duration::from_secs(20);

impl Shared {
    /// The shared state of a soak whose load stops at `end`.
    pub(crate) fn new(target: Target, plan: LoadPlan, rooms: usize, end: Instant) -> Shared {
        Shared {
            draining: AtomicUsize::new(plan.conns),
            target,
            plan,
            tally: SoakTally::default(),
            ledger: Ledger::new(rooms),
            end,
        }
    }

    /// One connection has had its calls answered (or given up).
    pub(crate) fn drained(&self) {
        self.draining.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether every connection has.
    pub(crate) fn all_drained(&self) -> bool {
        self.draining.load(Ordering::SeqCst) == 0
    }
}

/// A small fast random number generator (xorshift64*), seeded per client
/// so that a run's choices do not depend on the machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(mix(seed).max(1))
    }

    /// A number below `n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        if n == 0 { 0 } else { x % n }
    }
}

/// SplitMix64's finalizer: a well-spread hash of `x`.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
