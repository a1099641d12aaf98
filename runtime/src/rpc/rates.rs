//! Rate limits on what clients send, each a token bucket:
//!
//! - per connection, on incoming messages (`message_rate`, `message_burst`);
//! - per user, across that user's connections on this server
//!   (`user_message_rate`, `user_message_burst`): [`UserRates`];
//! - per connection, on `rpc.publish` (`publish_rate`, `publish_burst`);
//! - per connection and action, for actions that set
//!   `Action::rate_limit` (their buckets made on first call).
//!
//! Every refusal is -32004 before anything reaches an action, and counts
//! towards the connection's `rate_refusals_before_close` in 10 s; past
//! that the connection is closed with 1008.

use crate::auth::now_secs;
use crate::config::Config;
use crate::rate::TokenBucket;
use crate::rpc::error::{ErrorCode, RpcError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window refusals are counted in.
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// A bucket of `burst` refilled at `per_second`.
fn bucket(per_second: u32, burst: u32) -> TokenBucket {
    let burst = burst.max(1);
    TokenBucket::new(
        burst,
        Duration::from_secs_f64(f64::from(burst) / f64::from(per_second.max(1))),
    )
}

/// One connection's buckets.
#[derive(Debug)]
pub struct ConnectionRates {
    messages: Option<TokenBucket>,
    publishes: Option<TokenBucket>,
    /// Per action path, for actions with a limit of their own (made on
    /// their first call: most connections never need one). Boxed: one
    /// pointer in every connection instead of a whole map.
    #[allow(clippy::box_collection)]
    actions: Option<Box<HashMap<String, TokenBucket>>>,
    refusals: TokenBucket,
    exhausted: bool,
}

impl ConnectionRates {
    /// The buckets the settings ask for.
    pub fn new(config: &Config) -> ConnectionRates {
        ConnectionRates {
            messages: (config.message_rate > 0)
                .then(|| bucket(config.message_rate, config.message_burst)),
            publishes: (config.publish_rate > 0)
                .then(|| bucket(config.publish_rate, config.publish_burst)),
            actions: None,
            refusals: TokenBucket::new(config.rate_refusals_before_close.max(1), REFUSAL_WINDOW),
            exhausted: false,
        }
    }

    /// Whether the connection's message rate is limited.
    pub fn limits_messages(&self) -> bool {
        self.messages.is_some()
    }

    /// Takes one message from the connection's allowance; the refusal if
    /// it has none left.
    pub fn take_message(&mut self, config: &Config, now: Instant) -> Result<(), RpcError> {
        if self.messages.as_mut().is_none_or(|b| b.try_take(now)) {
            return Ok(());
        }
        Err(self.refused(
            now,
            "connection",
            format!(
                "over this connection's message rate ({} a second, bursts of {}); slow down",
                config.message_rate, config.message_burst
            ),
        ))
    }

    /// Takes one `rpc.publish` from the connection's allowance.
    pub fn take_publish(&mut self, config: &Config, now: Instant) -> Result<(), RpcError> {
        if self.publishes.as_mut().is_none_or(|b| b.try_take(now)) {
            return Ok(());
        }
        Err(self.refused(
            now,
            "publish",
            format!(
                "over this connection's publish rate ({} a second, bursts of {}); slow down",
                config.publish_rate, config.publish_burst
            ),
        ))
    }

    /// Takes one call of action `path`, limited to `per_second` and
    /// `burst` per connection.
    pub fn take_action(
        &mut self,
        path: &str,
        (per_second, burst): (u32, u32),
        now: Instant,
    ) -> Result<(), RpcError> {
        let actions = self.actions.get_or_insert_with(Box::default);
        let taken = match actions.get_mut(path) {
            Some(bucket) => bucket.try_take(now),
            None => {
                let mut made = bucket(per_second, burst);
                let taken = made.try_take(now);
                actions.insert(path.to_owned(), made);
                taken
            }
        };
        if taken {
            return Ok(());
        }
        Err(self.refused(
            now,
            "action",
            format!(
                "over action '{path}''s rate ({per_second} calls a second per connection, bursts of {burst}); slow down"
            ),
        ))
    }

    /// Counts a refusal by `limit` (the user's, taken elsewhere, too) and
    /// makes its error.
    pub fn refused(&mut self, now: Instant, limit: &'static str, message: String) -> RpcError {
        crate::metrics::global().rate_limited(limit);
        if !self.refusals.try_take(now) {
            self.exhausted = true;
        }
        RpcError::new(ErrorCode::RateLimited, message)
    }

    /// Whether the connection kept exceeding its limits: close it with 1008.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }
}

/// Users' buckets, with when each was last used (seconds since the Unix
/// epoch).
type UserBuckets = HashMap<Arc<str>, (TokenBucket, u64)>;

/// Shards of the user map.
const SHARDS: usize = 16;

/// Every signed-in user's message bucket on this server, shared by the
/// user's connections. A bucket that refilled completely is forgotten at
/// the next sweep, so the map holds only users active lately.
#[derive(Debug)]
pub struct UserRates {
    per_second: u32,
    burst: u32,
    shards: Vec<Mutex<UserBuckets>>,
}

impl UserRates {
    /// Buckets of `burst` refilled at `per_second` (0: off).
    pub fn new(per_second: u32, burst: u32) -> UserRates {
        UserRates {
            per_second,
            burst,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Whether the limit is on.
    pub fn enabled(&self) -> bool {
        self.per_second > 0
    }

    /// Takes one message from `user`'s allowance; the refusal's message if
    /// there is none left.
    pub fn take(&self, user: &Arc<str>, now: Instant) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        let shard = &self.shards[shard_of(user)];
        let mut users = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let (bucket, last) = users
            .entry(Arc::clone(user))
            .or_insert_with(|| (bucket(self.per_second, self.burst), 0));
        *last = now_secs();
        if bucket.try_take(now) {
            Ok(())
        } else {
            Err(format!(
                "over the message rate of your user across its connections ({} a second, bursts of {}); slow down",
                self.per_second, self.burst
            ))
        }
    }

    /// Forgets the buckets of users not heard from for long enough to
    /// have refilled completely.
    pub fn sweep(&self) {
        let refill = u64::from(self.burst.max(1)).div_ceil(u64::from(self.per_second.max(1)));
        let now = now_secs();
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|_, (_, last)| now.saturating_sub(*last) <= refill + 1);
        }
    }

    /// Users with a bucket now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no user has a bucket now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn shard_of(user: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.as_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (hash as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_shares_one_bucket_across_calls_and_is_forgotten_when_idle() {
        let rates = UserRates::new(1, 2);
        let ann: Arc<str> = Arc::from("ann");
        let bob: Arc<str> = Arc::from("bob");
        let now = Instant::now();
        assert!(rates.take(&ann, now).is_ok());
        assert!(rates.take(&ann, now).is_ok());
        assert!(rates.take(&ann, now).is_err());
        assert!(rates.take(&bob, now).is_ok(), "another user has their own");
        assert_eq!(rates.len(), 2);
        rates.sweep();
        assert_eq!(rates.len(), 2, "heard from just now");
        assert!(UserRates::new(0, 5).take(&ann, now).is_ok(), "off");
    }

    #[test]
    fn refusals_past_the_allowance_exhaust_the_connection() {
        let config = Config {
            publish_rate: 1,
            publish_burst: 1,
            rate_refusals_before_close: 2,
            ..Config::default()
        };
        let mut rates = ConnectionRates::new(&config);
        let now = Instant::now();
        assert!(rates.take_publish(&config, now).is_ok());
        let refused = rates.take_publish(&config, now);
        assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::RateLimited));
        assert!(!rates.exhausted());
        let _ = rates.take_publish(&config, now);
        assert!(!rates.exhausted());
        let _ = rates.take_publish(&config, now);
        assert!(rates.exhausted(), "the third refusal is one too many");
        assert!(rates.take_action("a/b", (1, 1), now).is_ok());
        assert!(rates.take_action("a/b", (1, 1), now).is_err());
        assert!(
            rates.take_action("a/c", (1, 1), now).is_ok(),
            "its own bucket"
        );
    }
}
