//! [`Session`]: the state of one connection that calls read: its id, who
//! signed in, and its share of the call limits.

use crate::auth::{Identity, now_secs};
use crate::rpc_error::{ErrorCode, RpcError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Semaphore;

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One connection's state, owned by its task.
#[derive(Debug)]
pub struct Session {
    /// The connection id (unique in this run, never 0).
    pub conn_id: u64,
    identity: Option<Identity>,
    /// Permits for this connection's running calls.
    pub inflight: Arc<Semaphore>,
}

impl Session {
    /// A new session, signed in if the handshake carried a valid token.
    pub fn new(identity: Option<Identity>, max_inflight: usize) -> Session {
        Session {
            conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            identity,
            inflight: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// Who signed in, if anyone.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether a (possibly expired) token was presented.
    pub fn is_signed_in(&self) -> bool {
        self.identity.is_some()
    }

    /// Signs the connection in, or refreshes its token.
    pub fn sign_in(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// The user a non-public action runs for, or why there is none.
    pub fn require_user(&self, action: &str) -> Result<&Arc<str>, RpcError> {
        match &self.identity {
            None => Err(RpcError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "action '{action}' needs a signed-in connection: send a token (Authorization: Bearer, ?token=, or rpc.auth)"
                ),
            )),
            Some(identity) if identity.expired_at(now_secs()) => Err(RpcError::new(
                ErrorCode::Unauthenticated,
                format!(
                    "your token expired at {} (Unix time); call rpc.auth with a fresh one",
                    identity.expires_at
                ),
            )),
            Some(identity) => Ok(&identity.user),
        }
    }
}
