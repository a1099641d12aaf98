//! The protocol's error and close codes (docs/protocol.md), and a count
//! of each code seen: every refusal the soak meets must carry one of them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The JSON-RPC error codes of the protocol's table.
pub(crate) const ERROR_CODES: [i64; 11] = [
    -32700, -32600, -32601, -32602, -32603, -32001, -32002, -32003, -32004, -32005, -32006,
];

/// The close codes of the protocol's table, with 1000 (a normal close)
/// and 1005 (a close frame with no code, which the peer may send).
pub(crate) const CLOSE_CODES: [u16; 10] =
    [1000, 1001, 1002, 1005, 1007, 1008, 1009, 4001, 4002, 4008];

/// Whether `code` is an error code of the protocol's table.
pub(crate) fn is_error_code(code: i64) -> bool {
    ERROR_CODES.contains(&code)
}

/// Whether `code` is a close code of the protocol's table.
pub(crate) fn is_close_code(code: u16) -> bool {
    CLOSE_CODES.contains(&code)
}

/// Counts of codes seen, by code.
#[derive(Debug, Default)]
pub(crate) struct CodeCounts {
    counts: Mutex<BTreeMap<i64, u64>>,
}

impl CodeCounts {
    /// Counts one `code`.
    pub(crate) fn add(&self, code: i64) {
        if let Ok(mut counts) = self.counts.lock() {
            *counts.entry(code).or_default() += 1;
        }
    }

    /// Every code seen, with its count.
    pub(crate) fn snapshot(&self) -> BTreeMap<i64, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

/// `code: count` pairs on one line (`none` when empty).
pub(crate) fn describe(counts: &BTreeMap<i64, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
