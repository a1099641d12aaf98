//! What the soak's clients count while they run, shared by all of them:
//! plain counters, codes by kind, and [`Violations`] (each broken promise,
//! with the first few described).

use super::codes::CodeCounts;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many violations of one kind are described in the report.
const EXAMPLES: usize = 5;

/// Broken promises of one kind: how many, and the first few.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    count: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Violations {
    /// Records one, described by `what`.
    pub(crate) fn record(&self, what: impl FnOnce() -> String) {
        if self.count.fetch_add(1, Ordering::Relaxed) < EXAMPLES as u64
            && let Ok(mut examples) = self.examples.lock()
        {
            examples.push(what());
        }
    }

    /// How many were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first few, described.
    pub(crate) fn examples(&self) -> Vec<String> {
        self.examples.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// A counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the soak's clients count.
#[derive(Debug, Default)]
pub(crate) struct SoakTally {
    /// Action calls sent by the well-behaved connections.
    pub(crate) calls: Counter,
    /// Of those, answered with the right result.
    pub(crate) calls_ok: Counter,
    /// Calls refused (an error reply).
    pub(crate) call_refusals: Counter,
    /// Calls in flight on a connection dropped by a storm (never
    /// answered, and not expected to be).
    pub(crate) abandoned: Counter,
    /// Answered with a result that is not what was asked for.
    pub(crate) wrong_results: Violations,
    /// Calls, publishes, joins and leaves still unanswered at the end on
    /// a connection that stayed open.
    pub(crate) unanswered: Violations,
    /// `rpc.publish` calls sent.
    pub(crate) publishes: Counter,
    /// Publishes acknowledged with an offset.
    pub(crate) acked: Counter,
    /// Room messages received in order while joined (replays included).
    pub(crate) deliveries: Counter,
    /// Joins answered with a result.
    pub(crate) joins: Counter,
    /// Leaves answered with a result.
    pub(crate) leaves: Counter,
    /// Broken delivery promises: a gap, a duplicate, a message out of
    /// order, one a member that stayed joined never got, or one whose
    /// content is not what was acknowledged at its offset.
    pub(crate) lost: Violations,
    /// Messages of a room received after its leave was answered.
    pub(crate) after_leave: Counter,
    /// Reconnections (after a storm, or after the server closed one).
    pub(crate) reconnects: Counter,
    /// Rejoins with `since` answered `recovered: true`, replay exact.
    pub(crate) recovered: Counter,
    /// Rejoins with `since` answered `recovered: false`.
    pub(crate) not_recovered: Counter,
    /// Of those, asked with an epoch made up on purpose.
    pub(crate) stale_epochs: Counter,
    /// Recoveries that were not exact (a message missing, extra or out of
    /// order in the replay, a replay with `recovered: false`, or
    /// `recovered: true` for a made-up epoch).
    pub(crate) bad_recoveries: Violations,
    /// Error replies, by code, from every client of the soak.
    pub(crate) refusals: CodeCounts,
    /// Close codes the server sent, by code, to every client of the soak.
    pub(crate) closes: CodeCounts,
    /// Connections the server ended with no close frame.
    pub(crate) dropped: Counter,
    /// Well-behaved connections the server closed or dropped.
    pub(crate) members_closed: Counter,
    /// Error replies or closes whose code is not in the protocol's table
    /// (or an error reply with no code at all).
    pub(crate) bad_codes: Violations,
}

impl SoakTally {
    /// Counts an error reply's code (`None`: it had none, a violation).
    pub(crate) fn refusal(&self, code: Option<i64>, reply: &str) {
        match code {
            Some(code) => {
                self.refusals.add(code);
                if !super::codes::is_error_code(code) {
                    self.bad_codes
                        .record(|| format!("error code {code} is not the protocol's: {reply}"));
                }
            }
            None => self
                .bad_codes
                .record(|| format!("an error with no code: {reply}")),
        }
    }

    /// Counts a close frame's code from the server.
    pub(crate) fn close(&self, code: u16) {
        self.closes.add(i64::from(code));
        if !super::codes::is_close_code(code) {
            self.bad_codes
                .record(|| format!("close code {code} is not the protocol's"));
        }
    }
}
