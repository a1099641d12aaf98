//! The connection's one timer: the auth timeout while it has not signed
//! in, then the expiry warning (`token.expiring`) and the expiry itself
//! (Close 4002), armed to the millisecond; and the heartbeat, whichever
//! comes first: a connection silent for `ping_interval_ms` is pinged, and
//! dropped if nothing comes back within `pong_timeout_ms` (a peer that
//! vanished leaves no half-open connection behind). The heartbeat's turn
//! also hands back the slots the outbound queue kept from its last burst.

use super::*;

/// What the connection's one timer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Not signed in yet: close with 4001 when it fires.
    AuthTimeout,
    /// The sign-in ends soon: warn the client.
    ExpiryWarning,
    /// The sign-in has ended: close with 4002.
    Expiry,
    /// Time to see whether the peer is still there.
    Heartbeat,
}

/// Where the heartbeat stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// Heartbeats are off (`ping_interval_ms = 0`).
    Off,
    /// Waiting out an interval.
    Listening,
    /// A ping was sent and nothing came back yet.
    Pinged,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + ReadState> Connection<S> {
    /// Points the timer at the next thing due: the auth timeout while not
    /// signed in, else the expiry warning, else the expiry itself.
    pub(super) fn arm_timer(&mut self) {
        self.armed_at_sign_in = self.session.sign_ins;
        let next = match self.session.identity() {
            None => self
                .state
                .config
                .auth_timeout()
                .map(|limit| (self.connected_at + limit, Timer::AuthTimeout)),
            Some(identity) => identity.expires_at.map(|exp| {
                let now = now_millis();
                // Capped, so an absurd expiry cannot overflow the clock. The
                // close is armed for `exp + leeway` to the millisecond, the
                // moment calls start being refused.
                let until = |ms: u64| {
                    let wait =
                        Duration::from_millis(ms.saturating_sub(now).min(MAX_TIMER_SECS * 1000));
                    Instant::now()
                        .checked_add(wait)
                        .unwrap_or_else(Instant::now)
                };
                let close_at = until(ends_at_ms(exp, self.state.auth.leeway()));
                let warn_at = until(ends_at_ms(exp, 0))
                    .checked_sub(EXPIRY_WARNING)
                    .unwrap_or_else(Instant::now);
                if self.warned_sign_in != self.session.sign_ins && warn_at < close_at {
                    (warn_at, Timer::ExpiryWarning)
                } else {
                    (close_at, Timer::Expiry)
                }
            }),
        };
        let next = match (next, self.beat) {
            (_, Beat::Off) => next,
            (Some((at, kind)), _) if at <= self.beat_at => Some((at, kind)),
            _ => Some((self.beat_at, Timer::Heartbeat)),
        };
        self.timer_for = next.map(|(_, kind)| kind);
        if let Some((at, _)) = next {
            self.timer.as_mut().reset(at);
        }
    }

    /// The heartbeat's turn: heard from since the last one, or pinged and
    /// answered: wait another interval; silent: ping; pinged and still
    /// silent: drop the connection.
    async fn on_heartbeat(&mut self) -> Next {
        // Quiet or not, a heartbeat's turn is rare: the slots the queue
        // kept from its last burst go back, unless a burst is under way.
        self.replies_rx.free_spare();
        self.running.free_if_idle();
        let config = &self.state.config;
        let interval = Duration::from_millis(config.ping_interval_ms);
        let next = if self.heard {
            self.beat = Beat::Listening;
            Next::Continue
        } else if self.beat == Beat::Pinged {
            conn_info!(
                self,
                "closing: no answer to a ping within {} ms",
                config.pong_timeout_ms
            );
            return Next::Stop("no answer to a ping (pong_timeout_ms)");
        } else {
            self.beat = Beat::Pinged;
            self.beat_at = Instant::now() + Duration::from_millis(config.pong_timeout_ms);
            self.heard = false;
            self.arm_timer();
            return match self.ws.send(Message::Ping(Bytes::new())).await {
                Ok(()) => Next::Continue,
                Err(_) => Next::Stop("the ping could not be written"),
            };
        };
        self.heard = false;
        self.beat_at = Instant::now() + interval;
        self.arm_timer();
        next
    }

    pub(super) async fn on_timer(&mut self) -> Next {
        let fired = self.timer_for.take();
        match fired {
            Some(Timer::AuthTimeout) if self.session.identity().is_none() => {
                conn_info!(self, "closing: no valid token within auth_timeout");
                Next::Close(CloseCode::from(4001), "no valid token before auth_timeout")
            }
            Some(Timer::ExpiryWarning) => {
                self.warned_sign_in = self.session.sign_ins;
                let expires_at = self
                    .session
                    .identity()
                    .and_then(|i| i.expires_at)
                    .unwrap_or_default();
                let push = protocol::event_push(
                    "token.expiring",
                    &serde_json::json!({
                        "expires_at": expires_at,
                        "in_secs": expires_at.saturating_sub(now_secs()),
                    }),
                );
                self.arm_timer();
                self.write(push).await
            }
            Some(Timer::Expiry)
                if self
                    .session
                    .identity()
                    .is_some_and(|i| i.expired_at(now_millis(), self.state.auth.leeway())) =>
            {
                conn_info!(self, "closing: the token expired and was not refreshed");
                Next::Close(
                    CloseCode::from(4002),
                    "the token expired and was not refreshed",
                )
            }
            Some(Timer::Heartbeat) => self.on_heartbeat().await,
            _ => {
                self.arm_timer();
                Next::Continue
            }
        }
    }
}
