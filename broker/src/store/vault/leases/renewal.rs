//! One entry's life: renew the lease at two thirds of its duration, and
//! when Vault shortens a renewal (the role's `max_ttl` is near) or refuses
//! it, issue a fresh credential as the next version, which the entry's
//! watch channel pushes to the holder's streams. While Vault cannot be
//! reached the last credential is served until its lease ends. When the
//! holder has had no open watch for the mount's `grace`, the entry is
//! retired (see [`revocation::holder_gone`]).

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant, SystemTime},
};

use super::{
    super::backend::CallError,
    grant::{self, Credential, LEASE_EXPIRES_LABEL, unix_seconds},
    held::{Held, failure_kind, gauge_state},
    revocation,
    table::Leases,
};
use crate::store::LeaseAction;

/// One entry's life: renew, rotate, and revoke when unwatched.
pub(super) async fn manage(weak: Weak<Leases>, held: Arc<Held>) {
    let shutdown = match weak.upgrade() {
        Some(leases) => leases.vault.shutdown.clone(),
        None => return,
    };
    let mut idle_since: Option<Instant> = None;
    loop {
        let renew_at = held.state.lock().await.as_ref().map(|c| c.renew_at);
        let idle_until = if held.version.receiver_count() == 0 {
            Some(*idle_since.get_or_insert_with(Instant::now) + held.mount.grace)
        } else {
            idle_since = None;
            None
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = held.issued.notified() => {}
            () = held.version.closed(), if idle_until.is_none() => {}
            () = tokio::time::sleep_until(idle_until.unwrap_or(far).into()), if idle_until.is_some() => {
                let Some(leases) = weak.upgrade() else { return };
                if leases.retire_if_unused(&held) {
                    revocation::holder_gone(&leases, &held).await;
                    return;
                }
                idle_since = None;
            }
            () = tokio::time::sleep_until(renew_at.unwrap_or(far).into()), if renew_at.is_some() => {
                let Some(leases) = weak.upgrade() else { return };
                renew_or_rotate(&leases, &held).await;
            }
        }
    }
}

/// At the renewal time: renew, or issue the next version when Vault
/// shortened the lease (its `max_ttl` is near) or the lease is gone.
async fn renew_or_rotate(leases: &Leases, held: &Held) {
    let mut state = held.state.lock().await;
    let Some(current) = state.as_mut() else {
        return;
    };
    renew_or_rotate_held(leases, held, current).await;
    held.publish(state.as_ref());
}

async fn renew_or_rotate_held(leases: &Leases, held: &Held, current: &mut Credential) {
    let path = held.path();
    let renewed = if current.renewable {
        grant::renew(&leases.vault, &current.lease_id, current.lease).await
    } else {
        Err(CallError::Other(0, "not renewable".into()))
    };
    let now = Instant::now();
    if current.renewable {
        // Certificates are never renewed, only reissued: not counted.
        crate::metrics::lease_renewal(renewed.is_ok());
    }
    let before = gauge_state(Some(current));
    let reason = match renewed {
        Ok(granted) if granted >= current.lease => {
            current.renew_at = now + granted * 2 / 3;
            current.expires_at = now + granted;
            current.expires_wall = SystemTime::now() + granted;
            current.failing = None;
            crate::metrics::lease_state(before, Some(false));
            current.secret.labels.insert(
                LEASE_EXPIRES_LABEL.to_string(),
                unix_seconds(current.expires_wall).to_string(),
            );
            tracing::debug!(path = %path, lease_id = %current.lease_id, ttl_s = granted.as_secs(), "renewed a lease");
            return;
        }
        Err(CallError::Unavailable(detail)) => {
            // Keep the credential until its lease ends; retry sooner.
            let left = current.expires_at.saturating_duration_since(now);
            current.renew_at = now + (left / 3).max(Duration::from_millis(500));
            let first_failure = current.failing.is_none();
            current
                .failing
                .get_or_insert((SystemTime::now(), "unavailable"));
            crate::metrics::lease_state(before, Some(true));
            tracing::warn!(path = %path, lease_id = %current.lease_id, left_s = left.as_secs(), error = %detail, "lease renewal failed; serving the last credential until it expires");
            if first_failure {
                leases.events.emit(
                    held,
                    LeaseAction::RenewFailed,
                    &current.lease_id,
                    current.secret.version,
                    "unavailable",
                );
            }
            if !left.is_zero() {
                return;
            }
            "expired"
        }
        Ok(_) => "max_ttl",
        Err(CallError::Other(0, _)) if !current.renewable => "not_renewable",
        // Refused or unknown: rotate.
        Err(_) => "renewal_refused",
    };
    let next = held.next_version();
    let before = gauge_state(Some(current));
    match leases.issue(held, next).await {
        Ok(fresh) => {
            // The old lease ends by itself at max_ttl, so an application
            // still using it has until then to pick up the new file.
            tracing::info!(path = %path, old_lease_id = %current.lease_id, version = next, "rotated a leased credential");
            held.remember(next, &fresh.lease_id);
            leases
                .events
                .emit(held, LeaseAction::Issue, &fresh.lease_id, next, reason);
            *current = fresh;
            crate::metrics::lease_state(before, Some(false));
            held.version.send_replace(next);
        }
        Err(error) => {
            let left = current.expires_at.saturating_duration_since(now);
            current.renew_at = now + (left / 3).max(Duration::from_millis(500));
            let kind = failure_kind(&error);
            if current.failing.is_none() {
                leases.events.emit(
                    held,
                    LeaseAction::RenewFailed,
                    &current.lease_id,
                    current.secret.version,
                    kind,
                );
            }
            current.failing.get_or_insert((SystemTime::now(), kind));
            crate::metrics::lease_state(before, Some(true));
            tracing::warn!(path = %path, error = %error, left_s = left.as_secs(), "could not issue the next credential; serving the last one until it expires");
        }
    }
}
