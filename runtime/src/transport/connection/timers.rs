//! The connection's one timer: the auth timeout while it has not signed
//! in, then the expiry warning (`token.expiring`) and the expiry itself
//! (Close 4002), armed to the millisecond.

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
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
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
        self.timer_for = next.map(|(_, kind)| kind);
        if let Some((at, _)) = next {
            self.timer.as_mut().reset(at);
        }
    }

    pub(super) async fn on_timer(&mut self) -> Next {
        let fired = self.timer_for.take();
        match fired {
            Some(Timer::AuthTimeout) if self.session.identity().is_none() => {
                tracing::info!("closing: no valid token within auth_timeout");
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
                tracing::info!("closing: the token expired and was not refreshed");
                Next::Close(
                    CloseCode::from(4002),
                    "the token expired and was not refreshed",
                )
            }
            _ => {
                self.arm_timer();
                Next::Continue
            }
        }
    }
}
