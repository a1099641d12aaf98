//! How a well-behaved connection of the soak reads what the server sends:
//! replies are matched to their requests and checked, room messages go
//! to the room's [`super::membership::Membership`], and everything found
//! is counted in the tally.

use super::ledger::{Ledger, Mismatch};
use super::member::{Member, Pending};
use super::membership::Findings;
use serde_json::Value;

impl Member {
    /// A text frame from the server.
    pub(super) fn on_text(&mut self, text: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            let n = self.n;
            self.shared
                .tally
                .wrong_results
                .record(|| format!("connection {n} got a frame that is not JSON: {text}"));
            return;
        };
        if frame.get("method").is_some() {
            if frame["method"] == "rpc.message" {
                self.on_message(&frame["params"]);
            }
            return;
        }
        let Some(pending) = frame["id"].as_u64().and_then(|id| self.pending.remove(&id)) else {
            return;
        };
        if let Some(error) = frame.get("error") {
            self.shared.tally.refusal(error["code"].as_i64(), text);
            if let Pending::Echo(_) | Pending::Sleep(_) = pending {
                self.shared.tally.call_refusals.inc();
            }
            if let Pending::Join(room) | Pending::Leave(room) = pending {
                self.rooms.remove(&room);
            }
            return;
        }
        self.on_result(pending, &frame["result"], text);
    }

    /// A successful reply to `pending`.
    fn on_result(&mut self, pending: Pending, result: &Value, text: &str) {
        let tally = &self.shared.tally;
        let n = self.n;
        match pending {
            Pending::Echo(params) => self.answered(*result == params, text),
            Pending::Sleep(ms) => self.answered(result["slept"] == ms, text),
            Pending::Publish { room, id } => {
                let Some(offset) = result["offset"].as_u64() else {
                    tally
                        .wrong_results
                        .record(|| format!("connection {n}: a publish answered {text}"));
                    return;
                };
                tally.acked.inc();
                let checked = self.shared.ledger.acked(room, offset, id);
                self.mismatch(room, offset, checked);
            }
            Pending::Join(room) => {
                tally.joins.inc();
                let (Some(offset), Some(epoch)) =
                    (result["offset"].as_u64(), result["epoch"].as_str())
                else {
                    tally
                        .wrong_results
                        .record(|| format!("connection {n}: a join answered {text}"));
                    self.rooms.remove(&room);
                    return;
                };
                let recovered = result["recovered"].as_bool();
                if let Some(membership) = self.rooms.get_mut(&room) {
                    let found = membership.joined(offset, epoch, recovered);
                    self.apply(room, found);
                }
            }
            Pending::Leave(room) => {
                tally.leaves.inc();
                if let Some(why) = self.rooms.remove(&room).and_then(|m| m.left()) {
                    tally
                        .lost
                        .record(|| format!("connection {n}, soak-{room}: {why}"));
                }
            }
        }
    }

    /// A call answered: with what it asked for (`right`), or not.
    fn answered(&self, right: bool, text: &str) {
        if right {
            self.shared.tally.calls_ok.inc();
        } else {
            let n = self.n;
            self.shared
                .tally
                .wrong_results
                .record(|| format!("connection {n}: a call answered {text}"));
        }
    }

    /// An `rpc.message` push.
    fn on_message(&mut self, params: &Value) {
        let room = params["room"].as_str().and_then(Ledger::index);
        let (Some(room), Some(offset)) = (room, params["offset"].as_u64()) else {
            return;
        };
        let id = params["data"]["p"].as_u64().unwrap_or(0);
        match self.rooms.get_mut(&room) {
            Some(membership) => {
                let found = membership.message(offset, id);
                self.apply(room, found);
            }
            None => self.shared.tally.after_leave.inc(),
        }
    }

    /// Counts what a membership step found.
    fn apply(&self, room: usize, found: Findings) {
        let tally = &self.shared.tally;
        let n = self.n;
        for (offset, id) in found.delivered {
            tally.deliveries.inc();
            let checked = self.shared.ledger.received(room, offset, id);
            self.mismatch(room, offset, checked);
        }
        for why in found.lost {
            tally
                .lost
                .record(|| format!("connection {n}, soak-{room}: {why}"));
        }
        let exact = found.bad_recovery.is_empty();
        for why in found.bad_recovery {
            tally
                .bad_recoveries
                .record(|| format!("connection {n}, soak-{room}: {why}"));
        }
        match found.recovery {
            Some(true) if exact => tally.recovered.inc(),
            Some(false) => tally.not_recovered.inc(),
            _ => {}
        }
    }

    /// Records a message whose content differs from its offset's.
    fn mismatch(&self, room: usize, offset: u64, checked: Result<(), Mismatch>) {
        if let Err(Mismatch(before, now)) = checked {
            let n = self.n;
            self.shared.tally.lost.record(|| {
                format!("connection {n}, soak-{room}: offset {offset} carried publish {now}, elsewhere {before}")
            });
        }
    }
}
