//! What a well-behaved connection of the soak does at each tick, picked
//! at random: an inline call (`echo`), a call run on the action pool
//! (`echo/sleep`), a publish to one of its rooms, a leave, or a join.

use super::ledger::Ledger;
use super::member::{Member, Pending};
use super::membership::Membership;
use crate::bench::client::BenchSocket;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error, Message};

/// Most rooms a connection is in at once.
const MAX_ROOMS: usize = 3;

impl Member {
    /// One operation.
    pub(super) async fn act(&mut self, ws: &mut BenchSocket) -> Result<(), Error> {
        self.seq += 1;
        let joined: Vec<usize> = self
            .rooms
            .iter()
            .filter(|(_, m)| m.is_joined())
            .map(|(room, _)| *room)
            .collect();
        let pick = |this: &mut Member, of: &[usize]| of[this.rng.below(of.len() as u64) as usize];
        match self.rng.below(100) {
            0..40 => {
                let params = json!({"n": self.n, "s": self.seq, "pad": "soak-payload-0123456789"});
                self.send(ws, "echo", params.clone(), Pending::Echo(params))
                    .await
            }
            40..60 => {
                let ms = self.rng.below(20);
                self.send(ws, "echo/sleep", json!({ "ms": ms }), Pending::Sleep(ms))
                    .await
            }
            60..85 if !joined.is_empty() => {
                let room = pick(self, &joined);
                let id = ((self.n as u64) << 32) | self.seq;
                self.shared.tally.publishes.inc();
                let params = json!({"room": Ledger::name(room), "data": {"p": id}});
                self.send(ws, "rpc.publish", params, Pending::Publish { room, id })
                    .await
            }
            85..93 if joined.len() > 1 => {
                let room = pick(self, &joined);
                let acked_max = self.shared.ledger.acked_max(room);
                if let Some(m) = self.rooms.get_mut(&room) {
                    m.leaving(acked_max);
                }
                let params = json!({ "room": Ledger::name(room) });
                self.send(ws, "rpc.leave", params, Pending::Leave(room))
                    .await
            }
            _ if self.rooms.len() < MAX_ROOMS => {
                let room = self.rng.below(self.shared.ledger.len() as u64) as usize;
                if self.rooms.contains_key(&room) {
                    return Ok(());
                }
                self.join(ws, room, None, false).await
            }
            _ => Ok(()),
        }
    }

    /// Sends `rpc.join` for `room`, recovering from `since` (offset,
    /// epoch) if given; `stale`: that epoch was made up.
    pub(super) async fn join(
        &mut self,
        ws: &mut BenchSocket,
        room: usize,
        since: Option<(u64, String)>,
        stale: bool,
    ) -> Result<(), Error> {
        let mut params = json!({ "room": Ledger::name(room) });
        if let Some((offset, epoch)) = &since {
            params["since"] = json!(offset);
            params["epoch"] = json!(epoch);
        }
        self.rooms.insert(room, Membership::joining(since, stale));
        self.send(ws, "rpc.join", params, Pending::Join(room)).await
    }

    /// Sends a request and remembers what it waits for.
    async fn send(
        &mut self,
        ws: &mut BenchSocket,
        method: &str,
        params: Value,
        pending: Pending,
    ) -> Result<(), Error> {
        let id = self.next_id;
        self.next_id += 1;
        if matches!(pending, Pending::Echo(_) | Pending::Sleep(_)) {
            self.shared.tally.calls.inc();
        }
        self.pending.insert(id, pending);
        let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        ws.send(Message::text(frame.to_string())).await
    }
}
