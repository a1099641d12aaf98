//! [`PendingHandshakes`]: TCP connections accepted but not (yet) upgraded
//! to a WebSocket (an HTTP request in progress, an idle keep-alive
//! connection, a client that connected and sent nothing), bounded in all
//! (`max_pending_handshakes`) and per address (`max_pending_per_address`).
//!
//! Each holds a file descriptor for up to `handshake_timeout_ms`. Without
//! a bound, a flood of connects that never upgrade could take every
//! descriptor the process may open: accepting would then fail for
//! everyone, open connections could not reach a plugin file, and new
//! upgrades would wait. Past the bound a new connection is refused at
//! once, clearly: `503 Service Unavailable` with `Retry-After: 1` (over
//! TLS, where nothing readable can be written before a handshake, it is
//! closed), and counted (`refused` in `/status`).
//!
//! Counted like connections that have not signed in
//! ([`AnonymousSlots`]): IPv4 addresses whole, IPv6 by /64. A trusted
//! proxy's connections count only towards the total, since they carry
//! many clients.

use crate::anonymous::{AnonymousSlot, AnonymousSlots, SlotsFull};
use crate::config::ProxyRange;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a refused connection may take to receive its 503, and then to
/// send what it already had on the way (read and dropped, so closing does
/// not reset the connection before the client has read the answer).
const REFUSAL_LINGER: Duration = Duration::from_millis(250);

/// The connections not yet upgraded, and their bounds.
#[derive(Debug)]
pub struct PendingHandshakes {
    slots: Arc<AnonymousSlots>,
    max_per_address: usize,
    refused: AtomicU64,
}

/// One pending connection's place, given back when dropped (once its
/// connection has upgraded or closed).
#[derive(Debug)]
pub struct PendingSlot {
    _slot: AnonymousSlot,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingFull {
    /// The server holds its maximum of connections not yet upgraded.
    #[error(
        "the server holds its maximum of {0} connections that have not finished their \
         handshake (max_pending_handshakes); retry in a moment"
    )]
    Total(usize),
    /// The client's address holds its maximum of them.
    #[error(
        "your address holds its maximum of {0} connections that have not finished their \
         handshake (max_pending_per_address); finish or close those first"
    )]
    Address(usize),
}

impl PendingHandshakes {
    /// Room for `max_total` connections not yet upgraded, at most
    /// `max_per_address` from one address.
    pub fn new(max_total: usize, max_per_address: usize) -> PendingHandshakes {
        PendingHandshakes {
            slots: Arc::new(AnonymousSlots::new(max_total, max_per_address)),
            max_per_address,
            refused: AtomicU64::new(0),
        }
    }

    /// Takes a place for a connection from `peer`, or says why there is
    /// none (and counts the refusal). A peer in `trusted` (a reverse
    /// proxy) counts only towards the total.
    pub fn admit(
        &self,
        peer: SocketAddr,
        trusted: &[ProxyRange],
    ) -> Result<PendingSlot, PendingFull> {
        let ip = peer.ip();
        let address = (!trusted.iter().any(|range| range.contains(ip))).then_some(ip);
        match self.slots.take(address) {
            Ok(slot) => Ok(PendingSlot { _slot: slot }),
            Err(full) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(match full {
                    SlotsFull::Total(max) => PendingFull::Total(max),
                    SlotsFull::Address(max) => PendingFull::Address(max),
                })
            }
        }
    }

    /// Connections not yet upgraded now.
    pub fn open(&self) -> usize {
        self.slots.count()
    }

    /// The most allowed at once.
    pub fn max(&self) -> usize {
        self.slots.max_total()
    }

    /// The most allowed at once from one address.
    pub fn max_per_address(&self) -> usize {
        self.max_per_address
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Refuses a connection past the bound: `503` with `Retry-After: 1` and
/// the reason (not over TLS: closed), then closes it. Bounded by
/// [`REFUSAL_LINGER`] twice; errors only end it sooner.
pub async fn refuse(mut stream: TcpStream, full: PendingFull, tls: bool) {
    tracing::debug!(peer = ?stream.peer_addr().ok(), "connection refused: {full}");
    if tls {
        return;
    }
    let body = format!("{full}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let written = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    // Read (and drop) what the client sent, until it closes or the linger
    // ends, so that closing with unread data does not reset the connection
    // under the response.
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bounded_in_all_and_per_address_and_proxies_count_only_in_all() {
        let pending = PendingHandshakes::new(3, 1);
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let proxy: ProxyRange = "10.0.0.2".parse().unwrap();
        let held = pending.admit(a, &[]);
        assert!(held.is_ok());
        assert_eq!(pending.admit(a, &[]).err(), Some(PendingFull::Address(1)));
        let from_proxy = [pending.admit(b, &[proxy]), pending.admit(b, &[proxy])];
        assert!(from_proxy.iter().all(Result::is_ok));
        assert_eq!(
            pending.admit(b, &[proxy]).err(),
            Some(PendingFull::Total(3))
        );
        assert_eq!((pending.open(), pending.refused()), (3, 2));
        drop(held);
        assert!(pending.admit(a, &[]).is_ok());
    }
}
