//! The rooms' ledger: for each room, the highest offset acknowledged to a
//! publisher so far, and which publish every offset carried (from its
//! acknowledgement or from the first member that received it), so that
//! every member's copy can be compared with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One room's entries.
#[derive(Debug, Default)]
struct RoomLedger {
    /// The highest offset acknowledged to a publisher.
    acked_max: AtomicU64,
    /// Offset -> publish id.
    carried: Mutex<HashMap<u64, u64>>,
}

/// The ledger of every soak room (`soak-<index>`).
#[derive(Debug)]
pub(crate) struct Ledger {
    rooms: Vec<RoomLedger>,
}

/// A message whose content differs from what its offset carried
/// elsewhere: (the publish id seen before, the one seen now).
#[derive(Debug)]
pub(crate) struct Mismatch(pub(crate) u64, pub(crate) u64);

impl Ledger {
    /// A ledger of `rooms` rooms.
    pub(crate) fn new(rooms: usize) -> Ledger {
        Ledger {
            rooms: (0..rooms).map(|_| RoomLedger::default()).collect(),
        }
    }

    /// The room's name.
    pub(crate) fn name(room: usize) -> String {
        format!("soak-{room}")
    }

    /// The room index of a name (`None`: not a soak room).
    pub(crate) fn index(name: &str) -> Option<usize> {
        name.strip_prefix("soak-")?.parse().ok()
    }

    /// How many rooms.
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Records that publish `id` was acknowledged at `offset`.
    pub(crate) fn acked(&self, room: usize, offset: u64, id: u64) -> Result<(), Mismatch> {
        let Some(ledger) = self.rooms.get(room) else {
            return Ok(());
        };
        ledger.acked_max.fetch_max(offset, Ordering::SeqCst);
        Self::carry(ledger, offset, id)
    }

    /// Records that a member received publish `id` at `offset`.
    pub(crate) fn received(&self, room: usize, offset: u64, id: u64) -> Result<(), Mismatch> {
        match self.rooms.get(room) {
            Some(ledger) => Self::carry(ledger, offset, id),
            None => Ok(()),
        }
    }

    /// The highest offset of `room` acknowledged so far.
    pub(crate) fn acked_max(&self, room: usize) -> u64 {
        self.rooms
            .get(room)
            .map_or(0, |l| l.acked_max.load(Ordering::SeqCst))
    }

    fn carry(ledger: &RoomLedger, offset: u64, id: u64) -> Result<(), Mismatch> {
        let Ok(mut carried) = ledger.carried.lock() else {
            return Ok(());
        };
        let before = *carried.entry(offset).or_insert(id);
        if before == id {
            Ok(())
        } else {
            Err(Mismatch(before, id))
        }
    }
}
