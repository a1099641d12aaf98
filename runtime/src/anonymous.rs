//! [`AnonymousSlots`]: connections that have not signed in, counted in all
//! and per remote address, so that sockets nobody vouches for can never
//! take the places of signed-in users.
//!
//! A connection upgraded without a valid token takes a slot; it gives the
//! slot back when it signs in (`rpc.auth`) or closes. Addresses are
//! counted whole for IPv4 and by /64 for IPv6, the block one subscriber
//! usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The anonymous connections open now, and their bounds.
#[derive(Debug)]
pub struct AnonymousSlots {
    max_total: usize,
    max_per_address: usize,
    total: AtomicUsize,
    per_address: Mutex<HashMap<AddressKey, usize>>,
}

/// An address as counted: IPv4 whole, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl AddressKey {
    fn of(address: IpAddr) -> AddressKey {
        match address {
            IpAddr::V4(v4) => AddressKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.octets()),
                None => {
                    let octets = v6.octets();
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&octets[..8]);
                    AddressKey::V6Prefix(prefix)
                }
            },
        }
    }
}

/// Why no anonymous slot was free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotsFull {
    /// The server holds its maximum of anonymous connections.
    #[error(
        "the server holds its maximum of {0} connections that have not signed in; \
         connect with a token (Authorization: Bearer or ?token=) or retry in a moment"
    )]
    Total(usize),
    /// This address holds its maximum of anonymous connections.
    #[error(
        "your address holds its maximum of {0} connections that have not signed in; \
         sign in on the ones you have (rpc.auth) or connect with a token"
    )]
    Address(usize),
}

/// One anonymous connection's place, given back when dropped.
#[derive(Debug)]
pub struct AnonymousSlot {
    slots: Arc<AnonymousSlots>,
    key: Option<AddressKey>,
}

impl AnonymousSlots {
    /// Room for `max_total` anonymous connections, `max_per_address` from
    /// any one address.
    pub fn new(max_total: usize, max_per_address: usize) -> AnonymousSlots {
        AnonymousSlots {
            max_total,
            max_per_address,
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for a connection from `address` (`None`: unknown, only
    /// the total applies).
    pub fn take(self: &Arc<Self>, address: Option<IpAddr>) -> Result<AnonymousSlot, SlotsFull> {
        let max = self.max_total;
        self.total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| SlotsFull::Total(max))?;
        let key = address.map(AddressKey::of);
        if let Some(key) = key {
            let mut per_address = self.lock();
            let count = per_address.entry(key).or_insert(0);
            if *count >= self.max_per_address {
                if *count == 0 {
                    per_address.remove(&key);
                }
                drop(per_address);
                self.total.fetch_sub(1, Ordering::Relaxed);
                return Err(SlotsFull::Address(self.max_per_address));
            }
            *count += 1;
        }
        Ok(AnonymousSlot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// Anonymous connections open now.
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The most anonymous connections allowed.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, usize>> {
        // One map update per critical section: poison is harmless.
        self.per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_address = self.slots.lock();
            if let Some(count) = per_address.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_address.remove(&key);
                }
            }
        }
        self.slots.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_in_all_and_per_address_and_given_back() {
        let slots = Arc::new(AnonymousSlots::new(3, 2));
        let a: IpAddr = IpAddr::from([10, 0, 0, 1]);
        let b: IpAddr = IpAddr::from([10, 0, 0, 2]);
        let first = slots.take(Some(a));
        let second = slots.take(Some(a));
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(slots.take(Some(a)).err(), Some(SlotsFull::Address(2)));
        let third = slots.take(Some(b));
        assert!(third.is_ok());
        assert_eq!(slots.take(Some(b)).err(), Some(SlotsFull::Total(3)));
        drop(first);
        assert_eq!(slots.count(), 2);
        assert!(slots.take(Some(a)).is_ok());
        assert_eq!(slots.count(), 2, "the slot taken above was dropped at once");
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let slots = Arc::new(AnonymousSlots::new(10, 1));
        let one: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 1]);
        let same_64: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9]);
        let other_64: IpAddr = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        let _held = slots.take(Some(one));
        assert_eq!(slots.take(Some(same_64)).err(), Some(SlotsFull::Address(1)));
        assert!(slots.take(Some(other_64)).is_ok());
    }
}
