//! [`ReplayCache`]: remembers one-time tokens (`jti`) until they expire,
//! so each can open at most one connection — the nonce handshake of the
//! older action servers, without a database.

use super::TokenError;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;

/// One-time tokens seen by a whole cluster (in Redis), so a token opens
/// one connection across every node.
pub trait OneTimeTokens: Send + Sync + std::fmt::Debug {
    /// Records `jti` (valid until `expires_at`, seconds since the Unix
    /// epoch) as used, or refuses it if any node saw it before. When the
    /// store cannot be reached the token is refused: never let one through
    /// twice.
    fn use_once<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
    ) -> BoxFuture<'a, Result<(), TokenError>>;
}

/// The `jti`s seen, each kept until its token's expiry.
#[derive(Debug)]
pub struct ReplayCache {
    seen: Mutex<HashMap<String, u64>>,
    max: usize,
}

impl ReplayCache {
    /// A cache holding at most `max` live entries.
    pub fn new(max: usize) -> ReplayCache {
        ReplayCache {
            seen: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Records `jti` (valid until `expires_at`) as used, or refuses it if
    /// it was used before. Called once per sign-in, never per message.
    pub fn use_once(&self, jti: &str, expires_at: u64, now: u64) -> Result<(), TokenError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.get(jti).is_some_and(|exp| *exp >= now) {
            return Err(TokenError::Replayed);
        }
        if seen.len() >= self.max {
            seen.retain(|_, exp| *exp >= now);
            if seen.len() >= self.max {
                return Err(TokenError::ReplayCacheFull);
            }
        }
        seen.insert(jti.to_owned(), expires_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_and_forgotten_after_expiry() {
        let cache = ReplayCache::new(2);
        assert_eq!(cache.use_once("a", 100, 50), Ok(()));
        assert_eq!(cache.use_once("a", 100, 60), Err(TokenError::Replayed));
        assert_eq!(cache.use_once("b", 100, 60), Ok(()));
        assert_eq!(
            cache.use_once("c", 100, 60),
            Err(TokenError::ReplayCacheFull)
        );
        // After expiry, entries are purged to make room.
        assert_eq!(cache.use_once("c", 300, 200), Ok(()));
    }
}
