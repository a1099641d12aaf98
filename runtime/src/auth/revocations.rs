//! Revoked sign-ins: what an operator's `revoke` refuses from then on.
//!
//! A user revocation refuses that user's tokens issued up to the moment
//! of the revoke (`iat` at or before it; a sign-in with no `iat`, such as
//! an auth plugin's, counts as issued before), until the revocation's
//! `until`; a token revocation refuses one `jti` until then. Both are kept
//! in memory only until their `until`, and there are at most
//! [`MAX_REVOCATIONS`] at once (expired ones make way first): past that a
//! revoke is refused rather than the list grown without bound.

use super::Identity;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// Most revocations held at once.
pub const MAX_REVOCATIONS: usize = 100_000;

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every token of this user issued at or before `revoked_at`.
    User(String),
    /// The token with this `jti`.
    Jti(String),
}

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// What it refuses.
    pub target: Target,
    /// When it was made (seconds since the Unix epoch).
    pub revoked_at: u64,
    /// Until when it holds (seconds since the Unix epoch).
    pub until: u64,
}

/// The list was full of revocations still in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server already holds {MAX_REVOCATIONS} revocations in force; give earlier `until`s")]
pub struct Full;

/// Revocations in force.
#[derive(Debug, Default)]
pub struct Revocations {
    /// User to (revoked at, until).
    users: Mutex<HashMap<String, (u64, u64)>>,
    /// `jti` to until.
    jtis: Mutex<HashMap<String, u64>>,
}

impl Revocations {
    /// Adds a revocation (a later one for the same user or token replaces
    /// the earlier: the later moment, the later `until`). `now` is seconds
    /// since the Unix epoch.
    pub fn add(&self, revocation: &Revocation, now: u64) -> Result<(), Full> {
        match &revocation.target {
            Target::User(user) => {
                let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                make_way(&mut users, now, |(_, until)| *until, user)?;
                let entry = users.entry(user.clone()).or_insert((0, 0));
                entry.0 = entry.0.max(revocation.revoked_at);
                entry.1 = entry.1.max(revocation.until);
            }
            Target::Jti(jti) => {
                let mut jtis = self.jtis.lock().unwrap_or_else(PoisonError::into_inner);
                make_way(&mut jtis, now, |until| *until, jti)?;
                let entry = jtis.entry(jti.clone()).or_insert(0);
                *entry = (*entry).max(revocation.until);
            }
        }
        Ok(())
    }

    /// Whether `identity`'s sign-in is revoked at `now`.
    pub fn is_revoked(&self, identity: &Identity, now: u64) -> bool {
        if let Some(jti) = &identity.jti {
            let jtis = self.jtis.lock().unwrap_or_else(PoisonError::into_inner);
            if jtis.get(&**jti).is_some_and(|until| now < *until) {
                return true;
            }
        }
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .get(&*identity.user)
            .is_some_and(|(revoked_at, until)| {
                now < *until && identity.issued_at.is_none_or(|iat| iat <= *revoked_at)
            })
    }

    /// How many revocations are held (some may have expired).
    pub fn len(&self) -> usize {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            + self
                .jtis
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room for `key` in `map`: drops expired entries when it is full.
fn make_way<V>(
    map: &mut HashMap<String, V>,
    now: u64,
    until: impl Fn(&V) -> u64,
    key: &str,
) -> Result<(), Full> {
    if map.len() < MAX_REVOCATIONS / 2 || map.contains_key(key) {
        return Ok(());
    }
    map.retain(|_, v| until(v) > now);
    if map.len() < MAX_REVOCATIONS / 2 {
        Ok(())
    } else {
        Err(Full)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::AuthStep;
    use std::sync::Arc;

    fn identity(user: &str, iat: Option<u64>, jti: Option<&str>) -> Identity {
        Identity {
            user: Arc::from(user),
            expires_at: None,
            scopes: Arc::from(""),
            rooms: Arc::from(Vec::new()),
            data: None,
            source: AuthStep::Jwt,
            issued_at: iat,
            jti: jti.map(Arc::from),
        }
    }

    #[test]
    fn a_user_revocation_refuses_tokens_issued_up_to_it_until_its_end() {
        let list = Revocations::default();
        let revoke = Revocation {
            target: Target::User("ann".into()),
            revoked_at: 1000,
            until: 2000,
        };
        list.add(&revoke, 1000).unwrap();
        assert!(list.is_revoked(&identity("ann", Some(999), None), 1500));
        assert!(list.is_revoked(&identity("ann", Some(1000), None), 1500));
        assert!(list.is_revoked(&identity("ann", None, None), 1500));
        assert!(!list.is_revoked(&identity("ann", Some(1001), None), 1500));
        assert!(!list.is_revoked(&identity("bob", Some(1), None), 1500));
        assert!(!list.is_revoked(&identity("ann", Some(999), None), 2000));
    }

    #[test]
    fn a_token_revocation_refuses_that_jti_only() {
        let list = Revocations::default();
        let revoke = Revocation {
            target: Target::Jti("t-1".into()),
            revoked_at: 1000,
            until: 2000,
        };
        list.add(&revoke, 1000).unwrap();
        assert!(list.is_revoked(&identity("ann", Some(5000), Some("t-1")), 1500));
        assert!(!list.is_revoked(&identity("ann", Some(5000), Some("t-2")), 1500));
        assert!(!list.is_revoked(&identity("ann", None, None), 1500));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_full_list_makes_way_for_expired_entries_only() {
        let list = Revocations::default();
        for n in 0..MAX_REVOCATIONS / 2 {
            let revoke = Revocation {
                target: Target::Jti(format!("t-{n}")),
                revoked_at: 0,
                until: if n == 0 { 10 } else { 100 },
            };
            list.add(&revoke, 0).unwrap();
        }
        let one_more = Revocation {
            target: Target::Jti("new".into()),
            revoked_at: 0,
            until: 100,
        };
        assert_eq!(list.add(&one_more, 5), Err(Full));
        list.add(&one_more, 20).unwrap();
        assert_eq!(
            list.add(&one_more, 20),
            Ok(()),
            "an existing key is replaced"
        );
    }
}
