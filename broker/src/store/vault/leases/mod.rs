//! Leased secrets: database credentials and PKI certificates issued per
//! workload (see docs/dynamic.md). A certificate has no Vault lease: it is
//! reissued at two thirds of its life and never revoked.
//!
//! Each (holder, path) pair owns one entry ([`held`]) and one task
//! ([`renewal`]). The first read issues a credential (`<mount>/creds/<role>`,
//! [`grant`]) as version 1; the task renews and rotates it. When the holder
//! has had no open watch for the mount's `grace`, the lease is revoked and
//! the entry removed ([`revocation`]). Each replica records the database
//! leases it holds in the lease [`registry`], so that leases a crash leaves
//! are revoked.
//!
//! This room is what the store calls: the first read and the watch of an
//! entry, which start its task.

mod events;
mod grant;
mod held;
mod registry;
mod renewal;
mod revocation;
mod table;

use std::{sync::Arc, time::Instant};

use tokio::sync::watch;

pub use grant::LEASE_EXPIRES_LABEL;
pub(super) use revocation::revoke_lease;
pub(super) use table::Leases;

use super::{backend::Backend, config::MountConfig};
use crate::store::{Holder, LeaseAction, LeaseEvent, StoreError, StoredSecret};

/// The leases of a store on `vault`, with the registry's life started when
/// a mount revokes leftovers at start (then, not at a role's first read).
pub(super) fn start(vault: Arc<Backend>) -> Arc<Leases> {
    let leases = Arc::new(Leases::new(Arc::clone(&vault)));
    if vault.config.revokes_on_start() {
        let weak = Arc::downgrade(&leases.registry);
        tokio::spawn(registry::registry_loop(weak, vault.shutdown.clone()));
    }
    leases
}

/// The broker's own lease actions, for the audit trail: the receiver, once.
pub(super) fn take_events(leases: &Leases) -> Option<tokio::sync::mpsc::Receiver<LeaseEvent>> {
    leases.events.take()
}

/// The entry of `holder` on `path`, its task started if it is new.
fn held(leases: &Arc<Leases>, holder: &Holder, path: &str, mount: &MountConfig) -> Arc<held::Held> {
    let (held, new) = leases.entry(holder, path, mount);
    if new {
        tokio::spawn(renewal::manage(Arc::downgrade(leases), Arc::clone(&held)));
    }
    held
}

/// The version channel of `holder`'s credential on `path`; holding the
/// receiver keeps the lease alive.
pub(super) fn subscribe(
    leases: &Arc<Leases>,
    holder: &Holder,
    path: &str,
    mount: &MountConfig,
) -> watch::Receiver<u64> {
    held(leases, holder, path, mount).version.subscribe()
}

/// `holder`'s credential on `path`, issued on first use.
pub(super) async fn get(
    leases: &Arc<Leases>,
    holder: &Holder,
    path: &str,
    mount: &MountConfig,
    version: Option<u64>,
) -> Result<StoredSecret, StoreError> {
    loop {
        let held = held(leases, holder, path, mount);
        let mut state = held.state.lock().await;
        if held.retired.load(std::sync::atomic::Ordering::Acquire) {
            // Revoked between the lookup and now: start a new entry.
            continue;
        }
        if state.is_none() {
            let next = held.next_version();
            let credential = leases.issue(&held, next).await?;
            held.remember(next, &credential.lease_id);
            let reason = if next == 1 { "first_read" } else { "reissued" };
            leases.events.emit(
                &held,
                LeaseAction::Issue,
                &credential.lease_id,
                next,
                reason,
            );
            *state = Some(credential);
            held.publish(state.as_ref());
            crate::metrics::lease_state(None, Some(false));
            held.version.send_replace(next);
            held.issued.notify_one();
        }
        // Just set if it was empty.
        let Some(current) = state.as_ref() else {
            return Err(StoreError::Internal("lease state vanished".into()));
        };
        if version.is_some_and(|v| v != current.secret.version) {
            return Err(StoreError::VersionNotFound(version.unwrap_or(0)));
        }
        if current.expires_at <= Instant::now() {
            return Err(StoreError::Unavailable(
                "the lease expired and Vault cannot issue a new one".into(),
            ));
        }
        let mut secret = current.secret.clone();
        secret.ttl_hint = Some(current.expires_at.saturating_duration_since(Instant::now()));
        return Ok(secret);
    }
}
