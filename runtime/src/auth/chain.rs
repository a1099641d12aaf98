//! [`Authenticator`]: the configured chain of authenticators that turns a
//! token and a handshake into an [`Identity`].
//!
//! Steps run in the configured order (`jwt`, `plugin`, or both); the first
//! that accepts signs the connection in. With a token presented and every
//! step refusing, the sign-in is refused with the last step's reason. With
//! no token, a refusal leaves the connection anonymous (it may still call
//! public actions, and `auth_timeout` applies).

use super::jwt::JwtVerifier;
use super::replay::{OneTimeTokens, ReplayCache};
use super::revocations::Revocations;
use super::{Identity, TokenError, TokenMinter, now_secs};
use crate::config::{AuthStep, Config};
use crate::plugins::invoke::{Deadline, PluginFault, invoke};
use crate::plugins::loader::AuthArgs;
use crate::plugins::{LoadedPlugin, Registry};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long an auth plugin may take to judge.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Auth-plugin calls running at once at most; past it sign-ins that need
/// the plugin are refused as busy rather than queued without bound.
pub const MAX_PLUGIN_CALLS: usize = 64;

/// What the handshake told us about a connection, kept for the auth
/// plugin (on `rpc.auth` too) and lifecycle events.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// Request headers as a JSON object (lower-case names).
    pub headers_json: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The peer's address.
    pub remote_addr: String,
}

/// The verdict of a plugin's `authenticate` hook.
#[derive(Debug, Deserialize)]
struct PluginVerdict {
    user: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// The chain of authenticators.
#[derive(Debug)]
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    chain: Vec<AuthStep>,
    auth_plugin: Option<String>,
    replay: ReplayCache,
    /// In a cluster: the one-time tokens every node has seen.
    shared_replay: Option<Arc<dyn OneTimeTokens>>,
    /// Signs `POST /token`'s tokens, when the endpoint is on.
    endpoint_minter: Option<TokenMinter>,
    leeway: u64,
    plugin_calls: crate::call_slots::CallSlots,
    /// Sign-ins an operator revoked.
    revocations: Arc<Revocations>,
}

impl Authenticator {
    /// Builds the chain from the configuration.
    pub fn new(config: &Config, jwt: Option<JwtVerifier>) -> Authenticator {
        Authenticator {
            jwt,
            chain: config.auth_chain.clone(),
            auth_plugin: config.auth_plugin.clone(),
            replay: ReplayCache::new(config.jti_cache_max),
            shared_replay: None,
            endpoint_minter: None,
            leeway: config.jwt_leeway_secs,
            plugin_calls: crate::call_slots::CallSlots::new(MAX_PLUGIN_CALLS),
            revocations: Arc::default(),
        }
    }

    /// The sign-ins an operator revoked (checked at every sign-in).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Seconds of clock skew tolerated on expiry.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Judges a token (or its absence) with the handshake it came with.
    /// `Ok(None)` means anonymous.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        handshake: &Handshake,
        conn_id: u64,
        registry: &Registry,
    ) -> Result<Option<Identity>, TokenError> {
        let mut refusal = None;
        for step in &self.chain {
            let verdict = match step {
                AuthStep::Jwt => match (token, &self.jwt) {
                    (Some(token), Some(jwt)) => Some(self.verify_jwt(jwt, token).await),
                    _ => None,
                },
                AuthStep::Plugin => {
                    Some(self.ask_plugin(token, handshake, conn_id, registry).await)
                }
            };
            match verdict {
                Some(Ok(identity)) if self.revocations.is_revoked(&identity, now_secs()) => {
                    return Err(TokenError::Revoked);
                }
                Some(Ok(identity)) => return Ok(Some(identity)),
                Some(Err(e)) => refusal = Some(e),
                None => {}
            }
        }
        match (token, refusal) {
            (Some(_), Some(e)) => Err(e),
            (Some(_), None) => Err(TokenError::Unavailable(
                "this server has no authenticator for tokens (configure a JWT key or an auth plugin)".into(),
            )),
            (None, _) => Ok(None),
        }
    }

    async fn verify_jwt(&self, jwt: &JwtVerifier, token: &str) -> Result<Identity, TokenError> {
        let verified = jwt.verify(token)?;
        if let Some(jti) = &verified.jti {
            let until = verified
                .identity
                .expires_at
                .unwrap_or(u64::MAX)
                .saturating_add(self.leeway);
            match &self.shared_replay {
                Some(shared) => shared.use_once(jti, until).await?,
                None => self.replay.use_once(jti, until, now_secs())?,
            }
        }
        Ok(verified.identity)
    }

    /// Judges an HTTP request with the auth plugin alone (`POST /token`):
    /// who it is, as the plugin would sign in a handshake with its
    /// headers.
    pub async fn judge_request(
        &self,
        token: Option<&str>,
        request: &Handshake,
        registry: &Registry,
    ) -> Result<Identity, TokenError> {
        self.ask_plugin(token, request, 0, registry).await
    }

    /// The minter of `POST /token`'s tokens, when the endpoint is on.
    pub fn endpoint_minter(&self) -> Option<&TokenMinter> {
        self.endpoint_minter.as_ref()
    }

    /// Turns `POST /token` on, signing with `minter`.
    pub fn set_endpoint_minter(&mut self, minter: TokenMinter) {
        self.endpoint_minter = Some(minter);
    }

    /// Checks one-time tokens in `store` (shared by every node of a
    /// cluster) instead of this server's own memory.
    pub fn share_one_time_tokens(&mut self, store: Arc<dyn OneTimeTokens>) {
        self.shared_replay = Some(store);
    }

    fn auth_plugin(&self, registry: &Registry) -> Result<Arc<LoadedPlugin>, TokenError> {
        let snapshot = registry.snapshot();
        let mut candidates = snapshot.plugins.iter().filter(|p| p.has_authenticate());
        let found = match &self.auth_plugin {
            Some(name) => candidates.find(|p| &p.name == name),
            None => {
                let first = candidates.next();
                if candidates.next().is_some() {
                    return Err(TokenError::Unavailable(
                        "several plugins can authenticate; set auth_plugin to choose one".into(),
                    ));
                }
                first
            }
        };
        found
            .cloned()
            .ok_or_else(|| TokenError::Unavailable("no auth plugin is loaded".into()))
    }

    async fn ask_plugin(
        &self,
        token: Option<&str>,
        handshake: &Handshake,
        conn_id: u64,
        registry: &Registry,
    ) -> Result<Identity, TokenError> {
        let plugin = self.auth_plugin(registry)?;
        // The slot stays with the thread: a hung hook keeps its slot.
        let slot = self.plugin_calls.try_take().ok_or_else(|| {
            TokenError::Unavailable(
                "the auth plugin is busy with other sign-ins; retry shortly".into(),
            )
        })?;
        let (token, handshake) = (token.map(str::to_owned), handshake.clone());
        let asked = Arc::clone(&plugin);
        let answer = invoke(Deadline::from_now(PLUGIN_TIMEOUT), move |pending| {
            let _slot = slot;
            let args = AuthArgs {
                token: token.as_deref(),
                headers_json: &handshake.headers_json,
                query: handshake.query.as_deref(),
                remote_addr: &handshake.remote_addr,
                conn_id,
            };
            asked.authenticate(&args, pending);
        })
        .await;
        let body = match answer {
            Ok(answered) => answered.body,
            Err(fault @ PluginFault::Refused(_)) => {
                let reason = fault
                    .refusal_message(200)
                    .unwrap_or_else(|| "refused by the auth plugin".to_owned());
                return Err(TokenError::Refused(reason));
            }
            Err(PluginFault::NotAsked) => {
                return Err(TokenError::Unavailable(
                    "the auth plugin could not be asked".into(),
                ));
            }
            Err(PluginFault::TimedOut(after)) => {
                return Err(TokenError::Unavailable(format!(
                    "the auth plugin did not answer within {} s",
                    after.as_secs()
                )));
            }
            Err(fault) => {
                // The detail (a panic message) is for the operator, not the
                // unauthenticated client.
                tracing::error!(plugin = %plugin.name, "the auth plugin failed: {fault}");
                return Err(TokenError::Unavailable(
                    "the auth plugin failed; see the server log".into(),
                ));
            }
        };
        let verdict: PluginVerdict = serde_json::from_slice(&body).map_err(|e| {
            TokenError::Unavailable(format!(
                "the auth plugin {} gave an unreadable answer: {e}",
                plugin.name
            ))
        })?;
        if verdict.user.is_empty() {
            return Err(TokenError::Unavailable(format!(
                "the auth plugin {} named no user",
                plugin.name
            )));
        }
        Ok(Identity {
            user: verdict.user.into(),
            expires_at: verdict.expires_at,
            scopes: verdict.scopes.join(" ").into(),
            rooms: verdict.rooms.into(),
            data: verdict.data.map(|d| Arc::from(d.get())),
            source: AuthStep::Plugin,
            issued_at: None,
            jti: None,
        })
    }
}
