//! Ending leases: an operator's revocation (the holder's watches get a new
//! credential) and the retirement of an entry whose holder is gone.

use super::{
    super::config::Engine,
    held::{Held, gauge_state, info},
    table::Leases,
};
use crate::store::{LeaseAction, LeaseInfo, StoreError};

/// Revokes `lease_id` in Vault now (a certificate, which has no Vault
/// lease, is only forgotten) and gives its holder's watches a new
/// credential as the next version.
pub(in super::super) async fn revoke_lease(
    leases: &Leases,
    lease_id: &str,
) -> Result<LeaseInfo, StoreError> {
    let held = leases.find(lease_id).ok_or(StoreError::NotFound)?;
    let mut state = held.state.lock().await;
    let Some(current) = state.as_ref().filter(|c| c.lease_id == lease_id) else {
        // Rotated or revoked meanwhile: that lease is gone already.
        return Err(StoreError::NotFound);
    };
    let revoked = info(&held, current);
    if held.mount.engine == Engine::Database {
        leases.registry.revoke(lease_id).await?;
    }
    let old = state.take();
    held.publish(None);
    crate::metrics::lease_state(gauge_state(old.as_ref()), None);
    leases.events.emit(
        &held,
        LeaseAction::Revoke,
        lease_id,
        revoked.version,
        "operator",
    );
    if held.version.receiver_count() > 0 {
        let next = held.next_version();
        match leases.issue(&held, next).await {
            Ok(fresh) => {
                held.remember(next, &fresh.lease_id);
                leases
                    .events
                    .emit(&held, LeaseAction::Issue, &fresh.lease_id, next, "revoked");
                *state = Some(fresh);
                held.publish(state.as_ref());
                crate::metrics::lease_state(None, Some(false));
                held.issued.notify_one();
            }
            Err(error) => {
                // The watches ask for the next version, which is
                // issued on that read once Vault answers again.
                tracing::warn!(path = %held.path(), error = %error, "could not issue a credential after a revocation");
            }
        }
        held.version.send_replace(next);
    }
    Ok(revoked)
}

/// After an entry left the table (nobody watched it for the mount's
/// `grace`): its credential is dropped and a database lease revoked.
pub(super) async fn holder_gone(leases: &Leases, held: &Held) {
    let taken = held.state.lock().await.take();
    held.publish(None);
    crate::metrics::lease_state(gauge_state(taken.as_ref()), None);
    if let Some(c) = taken
        && held.mount.engine == Engine::Database
    {
        let reason = match leases.registry.revoke(&c.lease_id).await {
            Ok(()) => "holder_gone",
            Err(_) => "holder_gone_revoke_failed",
        };
        leases.events.emit(
            held,
            LeaseAction::Revoke,
            &c.lease_id,
            c.secret.version,
            reason,
        );
    }
}
