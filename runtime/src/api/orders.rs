//! What a revocation does on one server: it joins the list every sign-in
//! is checked against, and the connections signed in with a revoked
//! token are closed with 4002. The node the API call reached does it,
//! and so does every other node of a cluster when told.

use crate::auth::now_secs;
use crate::auth::revocations::{Full, Revocation};
use crate::cluster::Order;
use crate::rooms::hub::CloseRequest;
use crate::state::ServerState;

/// The close code of a connection whose sign-in was revoked.
pub const REVOKED: u16 = 4002;

/// Applies `revocation` here; how many connections it closed.
pub fn revoke_here(state: &ServerState, revocation: &Revocation) -> Result<usize, Full> {
    let now = now_secs();
    let revocations = state.auth.revocations();
    revocations.add(revocation, now)?;
    let close = CloseRequest {
        code: REVOKED,
        reason: "your token was revoked; sign in again".to_owned(),
    };
    let closed = state
        .hub
        .close_signed_in_where(|identity| revocations.is_revoked(identity, now), &close);
    tracing::info!(target = ?revocation.target, until = revocation.until, closed, "revoked");
    Ok(closed)
}

/// Carries out another node's order here.
pub fn obey(state: &ServerState, order: Order) {
    match order {
        Order::DisconnectUser { user, close } => {
            state.hub.close_user(&user, &close);
        }
        Order::Revoke(revocation) => {
            if let Err(full) = revoke_here(state, &revocation) {
                tracing::warn!("a revocation from another node was not kept: {full}");
            }
        }
    }
}
