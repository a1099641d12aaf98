//! [`Session`]: the state of one connection that calls read: its id, who
//! signed in and until when, the handshake it came with, and its share of
//! the call limits.

use crate::anonymous::AnonymousSlot;
use crate::auth::{Handshake, Identity, ends_at_ms, unix_millis_at};
use crate::call_slots::CallSlots;
use crate::rooms::hub::ConnHandle;
use crate::rpc::error::{ErrorCode, RpcError};
use crate::rpc::rates::ConnectionRates;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a sign-in is taken as live without consulting the system
/// clock again: a step of that clock shows within this.
const LIVE_RECHECK: Duration = Duration::from_secs(1);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Takes a fresh connection id (unique in this run, never 0).
pub fn next_conn_id() -> u64 {
    CONN_ID_BASE.load(Ordering::Relaxed) | NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// The high bits of every connection id from now on: a cluster node's
/// number, so connection ids are unique across nodes (0 alone).
static CONN_ID_BASE: AtomicU64 = AtomicU64::new(0);

/// Sets the high bits of every connection id (see [`next_conn_id`]).
pub fn set_conn_id_base(base: u64) {
    CONN_ID_BASE.store(base, Ordering::Relaxed);
}

/// One connection's state, owned by its task.
#[derive(Debug)]
pub struct Session {
    /// The connection id.
    pub conn_id: u64,
    identity: Option<Arc<Identity>>,
    /// The upgrade request, for the auth plugin and events.
    pub handshake: Arc<Handshake>,
    /// Slots for this connection's running calls
    /// (`max_inflight_per_connection`).
    pub inflight: CallSlots,
    /// Seconds of leeway on token expiry.
    leeway: u64,
    /// A moment before which the sign-in is known to be live: the system
    /// clock is consulted at most once a second per connection, and a
    /// call's check is otherwise one comparison of monotonic moments.
    live_until: Cell<Option<Instant>>,
    /// Bumped at every sign-in, so timers know when to re-arm.
    pub sign_ins: u64,
    /// How pushes reach this connection (set when its task starts).
    pub handle: Option<ConnHandle>,
    /// See [`Session::room_turn`].
    room_lane: Option<Arc<crate::rpc::lane::Lane>>,
    /// Its place among the connections that have not signed in, until it
    /// signs in (boxed: most connections sign in on the upgrade, and every
    /// idle connection holds its session).
    anonymous: Option<Box<AnonymousSlot>>,
    /// Its rate limits' buckets.
    pub rates: ConnectionRates,
}

impl Session {
    /// A new session, signed in if the handshake carried a valid token;
    /// otherwise holding its `anonymous` slot until it signs in.
    pub fn new(
        conn_id: u64,
        identity: Option<Arc<Identity>>,
        anonymous: Option<AnonymousSlot>,
        handshake: Arc<Handshake>,
        max_inflight: usize,
        leeway: u64,
        rates: ConnectionRates,
    ) -> Session {
        Session {
            conn_id,
            sign_ins: u64::from(identity.is_some()),
            identity,
            handshake,
            inflight: CallSlots::new(max_inflight),
            leeway,
            live_until: Cell::new(None),
            handle: None,
            room_lane: None,
            anonymous: anonymous.map(Box::new),
            rates,
        }
    }

    /// What a room call needs of this connection, as it is now.
    pub fn room_caller(&self) -> crate::rpc::room_calls::RoomCaller {
        crate::rpc::room_calls::RoomCaller {
            conn_id: self.conn_id,
            identity: self.live_identity().cloned(),
            handle: self.handle.clone(),
        }
    }

    /// A turn in the lane this connection's room calls take one at a time,
    /// in the order they were read, when they wait on a cluster broker
    /// (the lane is made on first use).
    pub fn room_turn(&mut self) -> crate::rpc::lane::Turn {
        self.room_lane
            .get_or_insert_with(|| Arc::new(crate::rpc::lane::Lane::default()))
            .take_turn()
    }

    /// Who signed in, if anyone.
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref()
    }

    /// The signed-in identity, if its sign-in has not ended.
    pub fn live_identity(&self) -> Option<&Arc<Identity>> {
        self.live_identity_at(Instant::now())
    }

    /// [`Session::live_identity`] at `now`, a moment the caller has just
    /// read (see [`unix_millis_at`]).
    pub fn live_identity_at(&self, now: Instant) -> Option<&Arc<Identity>> {
        self.identity
            .as_ref()
            .filter(|identity| !self.expired_at(identity, now))
    }

    /// Whether `identity`'s sign-in has ended at `now`.
    fn expired_at(&self, identity: &Identity, now: Instant) -> bool {
        let Some(exp) = identity.expires_at else {
            return false;
        };
        if self.live_until.get().is_some_and(|until| now < until) {
            return false;
        }
        let now_ms = unix_millis_at(now);
        let ends_ms = ends_at_ms(exp, self.leeway);
        if now_ms >= ends_ms {
            return true;
        }
        let left = Duration::from_millis(ends_ms - now_ms).min(LIVE_RECHECK);
        self.live_until.set(now.checked_add(left));
        false
    }

    /// Signs the connection in, or refreshes its sign-in.
    pub fn sign_in(&mut self, identity: Identity) {
        let identity = Arc::new(identity);
        if let Some(handle) = &self.handle {
            handle.flow.set_identity(Some(Arc::clone(&identity)));
        }
        self.identity = Some(identity);
        self.live_until.set(None);
        self.sign_ins += 1;
        self.anonymous = None;
    }

    /// The identity a non-public action runs for, or why there is none.
    /// `now` is a moment the caller has just read (see [`unix_millis_at`]).
    pub fn require_identity_at(
        &self,
        action: &str,
        now: Instant,
    ) -> Result<&Arc<Identity>, RpcError> {
        match &self.identity {
            None => Err(RpcError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "action '{action}' needs a signed-in connection: send a token (Authorization: Bearer, ?token=, or rpc.auth)"
                ),
            )),
            Some(identity) if self.expired_at(identity, now) => Err(RpcError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "your sign-in expired at {} (Unix time); call rpc.auth with a fresh token",
                    identity.expires_at.unwrap_or_default()
                ),
            )),
            Some(identity) => Ok(identity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Handshake, now_secs};

    fn identity(expires_at: Option<u64>) -> Identity {
        Identity::for_test("ann", expires_at)
    }

    fn session(identity: Identity) -> Session {
        let config = crate::config::Config::default();
        Session::new(
            1,
            Some(Arc::new(identity)),
            None,
            Arc::new(Handshake::default()),
            4,
            0,
            ConnectionRates::new(&config),
        )
    }

    #[test]
    fn a_sign_in_is_live_until_it_ends_and_not_a_moment_longer() {
        // Ended 1 to 2 s ago; the moments checked are taken from the
        // past, so each maps to the wall clock exactly.
        let ends = now_secs() - 1;
        let session = session(identity(Some(ends)));
        let now = Instant::now();
        let Some(start) = now.checked_sub(Duration::from_secs(4)) else {
            panic!("the monotonic clock has run for less than 4 s");
        };
        assert!(session.live_identity_at(start).is_some());
        // Within the second it was last checked: taken as live unread.
        assert!(
            session
                .live_identity_at(start + Duration::from_millis(500))
                .is_some()
        );
        // Past that second: read again, still live.
        assert!(
            session
                .live_identity_at(start + Duration::from_millis(1500))
                .is_some()
        );
        // Now, past its end: ended, though found live a moment before.
        assert!(session.live_identity_at(now).is_none());
        assert!(session.require_identity_at("a/b", now).is_err());
    }

    #[test]
    fn a_new_sign_in_is_checked_afresh() {
        let mut session = session(identity(Some(now_secs() + 3600)));
        let now = Instant::now();
        assert!(session.live_identity_at(now).is_some());
        // Replaced by one that has already ended: not live at the same
        // moment the previous one was found live.
        session.sign_in(identity(Some(now_secs().saturating_sub(10))));
        assert!(session.live_identity_at(now).is_none());
        session.sign_in(identity(None));
        assert!(session.require_identity_at("a/b", now).is_ok());
    }
}
