//! One-time tokens (`jti`) shared by the cluster through Redis.

use super::*;

/// One-time tokens (`jti`) remembered in Redis, so a token opens one
/// connection in the whole cluster.
#[derive(Clone)]
pub struct SharedOneTimeTokens {
    commands: ConnectionManager,
}

impl std::fmt::Debug for SharedOneTimeTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedOneTimeTokens")
    }
}

impl crate::auth::replay::OneTimeTokens for SharedOneTimeTokens {
    fn use_once<'a>(
        &'a self,
        jti: &'a str,
        expires_at: u64,
    ) -> BoxFuture<'a, Result<(), crate::auth::TokenError>> {
        Box::pin(async move {
            let mut commands = self.commands.clone();
            // At least a minute, so a token expiring now still cannot be
            // used twice within the leeway.
            let until = expires_at.max(crate::auth::now_secs() + 60);
            let set: Result<Option<String>, redis::RedisError> = redis::cmd("SET")
                .arg(keys::one_time_token(jti))
                .arg(1)
                .arg("NX")
                .arg("EXAT")
                .arg(until)
                .query_async(&mut commands)
                .await;
            match set {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(crate::auth::TokenError::Replayed),
                Err(e) => Err(crate::auth::TokenError::Unavailable(format!(
                    "this one-time token cannot be checked now: the cluster's Redis failed ({e}); \
                     retry in a moment"
                ))),
            }
        })
    }
}

impl RedisBroker {
    /// The cluster's record of one-time tokens, for the authenticator.
    pub fn one_time_tokens(&self) -> Arc<SharedOneTimeTokens> {
        Arc::new(SharedOneTimeTokens {
            commands: self.inner.commands.clone(),
        })
    }
}
