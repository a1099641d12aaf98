//! The soak's report: its figures, and the checks made at the end, each
//! printed with the figures it rests on. The command fails when a check
//! does.

use super::codes::describe;
use super::hostile::HostileFigures;
use super::reloads::ReloadFigures;
use super::rss::RssFigures;
use super::tally::{SoakTally, Violations};
use serde::Serialize;
use std::collections::BTreeMap;

/// One check made at the end.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What is checked.
    pub(crate) name: &'static str,
    /// Whether it held.
    pub(crate) passed: bool,
    /// The figures it rests on (and the first violations, if any).
    pub(crate) figures: String,
}

/// What the soak did and found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakReport {
    /// Seconds the load ran.
    pub(crate) duration_s: f64,
    /// Well-behaved connections.
    pub(crate) connections: usize,
    /// Action calls sent, answered right, and per second.
    pub(crate) calls: u64,
    pub(crate) calls_ok: u64,
    pub(crate) calls_per_s: f64,
    /// Calls in flight on a connection a storm dropped.
    pub(crate) abandoned: u64,
    /// Publishes sent, and acknowledged.
    pub(crate) publishes: u64,
    pub(crate) acked: u64,
    /// Room messages received in order while joined (replays included).
    pub(crate) deliveries: u64,
    /// Joins and leaves answered.
    pub(crate) joins: u64,
    pub(crate) leaves: u64,
    /// Reconnections, and the rejoins' answers.
    pub(crate) reconnects: u64,
    pub(crate) recovered: u64,
    pub(crate) not_recovered: u64,
    pub(crate) stale_epochs: u64,
    /// Messages of a room received after its leave was answered.
    pub(crate) after_leave: u64,
    /// Well-behaved connections the server closed or dropped.
    pub(crate) members_closed: u64,
    /// Error replies by code, close codes by code, drops with no close.
    pub(crate) refusals: BTreeMap<i64, u64>,
    pub(crate) closes: BTreeMap<i64, u64>,
    pub(crate) dropped: u64,
    /// Hot reloads (with `--reload-target`).
    pub(crate) reloads: Option<ReloadFigures>,
    /// Hostile clients.
    pub(crate) hostile: HostileFigures,
    /// The server's RSS (with `--pid`).
    pub(crate) rss: Option<RssFigures>,
    /// The checks.
    pub(crate) checks: Vec<Check>,
}

/// A check's figures, with the first violations after them.
fn with_examples(figures: String, violations: &[&Violations]) -> String {
    let examples: Vec<String> = violations.iter().flat_map(|v| v.examples()).collect();
    if examples.is_empty() {
        figures
    } else {
        format!("{figures}; first: {}", examples.join(" | "))
    }
}

impl SoakReport {
    /// The figures from the tally, and the checks made on them.
    pub(crate) fn new(
        tally: &SoakTally,
        connections: usize,
        duration_s: f64,
        alive: Result<(), String>,
        reloads: Option<ReloadFigures>,
        hostile: HostileFigures,
        rss: Option<RssFigures>,
    ) -> SoakReport {
        let mut report = SoakReport {
            duration_s,
            connections,
            calls: tally.calls.get(),
            calls_ok: tally.calls_ok.get(),
            calls_per_s: tally.calls_ok.get() as f64 / duration_s.max(1e-9),
            abandoned: tally.abandoned.get(),
            publishes: tally.publishes.get(),
            acked: tally.acked.get(),
            deliveries: tally.deliveries.get(),
            joins: tally.joins.get(),
            leaves: tally.leaves.get(),
            reconnects: tally.reconnects.get(),
            recovered: tally.recovered.get(),
            not_recovered: tally.not_recovered.get(),
            stale_epochs: tally.stale_epochs.get(),
            after_leave: tally.after_leave.get(),
            members_closed: tally.members_closed.get(),
            refusals: tally.refusals.snapshot(),
            closes: tally.closes.snapshot(),
            dropped: tally.dropped.get(),
            reloads,
            hostile,
            rss,
            checks: Vec::new(),
        };
        report.checks = report.checks_on(tally, alive);
        report
    }

    fn checks_on(&self, tally: &SoakTally, alive: Result<(), String>) -> Vec<Check> {
        let mut checks = vec![
            Check {
                name: "no crash: the server still answers",
                passed: alive.is_ok(),
                figures: match alive {
                    Ok(()) => {
                        "rpc.ping and echo answered on a new connection after the run".to_owned()
                    }
                    Err(why) => why,
                },
            },
            Check {
                name: "every acknowledged publish reached every member that stayed joined",
                passed: tally.lost.count() == 0,
                figures: with_examples(
                    format!(
                        "{} publishes sent, {} acknowledged, {} deliveries in order, {} lost, duplicated or out of order ({} messages arrived after their room's leave was answered)",
                        self.publishes,
                        self.acked,
                        self.deliveries,
                        tally.lost.count(),
                        self.after_leave
                    ),
                    &[&tally.lost],
                ),
            },
            Check {
                name: "every recovery was exact or said recovered: false",
                passed: tally.bad_recoveries.count() == 0
                    && (self.reconnects == 0 || self.recovered + self.not_recovered > 0),
                figures: with_examples(
                    format!(
                        "{} reconnects; rejoins: {} recovered: true with exactly the missed messages, {} recovered: false ({} asked with a made-up epoch), {} inexact",
                        self.reconnects,
                        self.recovered,
                        self.not_recovered,
                        self.stale_epochs,
                        tally.bad_recoveries.count()
                    ),
                    &[&tally.bad_recoveries],
                ),
            },
            Check {
                name: "every call was answered, with what it asked for",
                passed: tally.wrong_results.count() == 0 && tally.unanswered.count() == 0,
                figures: with_examples(
                    format!(
                        "{} calls, {} answered right ({:.0}/s), {} refused, {} in flight when a storm dropped their connection, {} answered wrong, {} unanswered",
                        self.calls,
                        self.calls_ok,
                        self.calls_per_s,
                        tally.call_refusals.get(),
                        self.abandoned,
                        tally.wrong_results.count(),
                        tally.unanswered.count()
                    ),
                    &[&tally.wrong_results, &tally.unanswered],
                ),
            },
            Check {
                name: "every refusal had a protocol code",
                passed: tally.bad_codes.count() == 0,
                figures: with_examples(
                    format!(
                        "errors by code: {}; closes by code: {}; {} dropped with no close frame; {} well-behaved connections closed by the server",
                        describe(&self.refusals),
                        describe(&self.closes),
                        self.dropped,
                        self.members_closed
                    ),
                    &[&tally.bad_codes],
                ),
            },
        ];
        let hostile_ok = !self.hostile.kinds.is_empty()
            && self.hostile.kinds.values().all(|(runs, ok, _)| runs == ok);
        checks.push(Check {
            name: "hostile clients were refused or closed as the protocol says",
            passed: hostile_ok,
            figures: if self.hostile.kinds.is_empty() {
                "no round of hostile clients ran (a run shorter than --hostile-every?)".to_owned()
            } else {
                self.hostile
                    .kinds
                    .iter()
                    .map(|(kind, (runs, ok, first))| match first {
                        Some(why) => format!("{kind}: {ok} of {runs} ({why})"),
                        None => format!("{kind}: {ok} of {runs}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        });
        if let Some(reloads) = &self.reloads {
            checks.push(Check {
                name: "every hot reload took effect",
                passed: reloads.attempted > 0 && reloads.done == reloads.attempted,
                figures: format!(
                    "{} of {} reloads announced as a new generation{}",
                    reloads.done,
                    reloads.attempted,
                    reloads
                        .first_failure
                        .as_ref()
                        .map(|f| format!("; first failure: {f}"))
                        .unwrap_or_default()
                ),
            });
        }
        checks.push(match &self.rss {
            Some(rss) => Check {
                name: "RSS flat after warm-up",
                passed: rss.slope_mib_per_min <= rss.bound_mib_per_min,
                figures: format!(
                    "RSS {:.1} MiB at the start, {:.1} MiB at half time, {:.1} MiB at the end (peak {:.1}); slope over the second half {:+.2} MiB/min, bound {:.2} MiB/min ({} samples)",
                    rss.start_kib as f64 / 1024.0,
                    rss.half_kib as f64 / 1024.0,
                    rss.end_kib as f64 / 1024.0,
                    rss.peak_kib as f64 / 1024.0,
                    rss.slope_mib_per_min,
                    rss.bound_mib_per_min,
                    rss.samples
                ),
            },
            None => Check {
                name: "RSS flat after warm-up",
                passed: true,
                figures: "not measured: give --pid (and a run of at least 8 s)".to_owned(),
            },
        });
        checks
    }

    /// How many checks failed.
    pub(crate) fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "soak: {:.0} s, {} connections: {:.0} calls/s ({} calls), {} publishes ({} acknowledged), {} deliveries, {} joins, {} leaves",
            self.duration_s,
            self.connections,
            self.calls_per_s,
            self.calls,
            self.publishes,
            self.acked,
            self.deliveries,
            self.joins,
            self.leaves
        )?;
        writeln!(
            f,
            "reloads {}, reconnects {}, recovered {} / not {}, refusals by code: {}, closes by code: {}",
            self.reloads.as_ref().map_or(0, |r| r.done),
            self.reconnects,
            self.recovered,
            self.not_recovered,
            describe(&self.refusals),
            describe(&self.closes)
        )?;
        for check in &self.checks {
            writeln!(
                f,
                "{} {}: {}",
                if check.passed { "PASS" } else { "FAIL" },
                check.name,
                check.figures
            )?;
        }
        Ok(())
    }
}
