//! Bounds on what one caller can hold open: watch streams per identity.
//! (Requests in flight per connection are bounded in `server.rs`.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{Broker, Call};
use crate::{audit::Outcome, auth::WorkloadIdentity, error::ApiError};

/// What one caller may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open `WatchSecrets` streams per identity (issuer, namespace and
    /// service account, so all pods of one workload share them). The next
    /// one is refused with `RESOURCE_EXHAUSTED`.
    pub watches_per_identity: usize,
    /// Requests one connection may have in flight at once (0: unbounded);
    /// the excess is refused with `RESOURCE_EXHAUSTED`.
    pub requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            watches_per_identity: 64,
            requests_per_connection: 128,
        }
    }
}

/// Open watch streams per identity.
#[derive(Default)]
pub(super) struct WatchCounts {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open watch; the slot is given back when this is dropped, however the
/// stream ends.
pub(super) struct WatchSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl WatchCounts {
    /// Takes a slot for `key`, or `None` when it already holds `max`.
    pub(super) fn acquire(&self, key: String, max: usize) -> Option<WatchSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(WatchSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key a store shares its backend budget by: one per service account
/// of one issuer, so the pods of one workload share one share.
pub(super) fn tenant(who: &WorkloadIdentity) -> String {
    // Built by hand: `format!` cost a third of a microsecond on every read.
    let (issuer, namespace, account) = (&who.issuer, &who.namespace, &who.service_account);
    let mut tenant = String::with_capacity(issuer.len() + namespace.len() + account.len() + 2);
    for part in [issuer.as_str(), " ", namespace, "/", account] {
        tenant.push_str(part);
    }
    tenant
}

impl Broker {
    /// Bounds what one caller can hold open (see [`Limits`]).
    pub fn with_limits(self, limits: Limits) -> Self {
        *self.inner.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
        self
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        *self.inner.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch slot for `who`, or `RESOURCE_EXHAUSTED` (audited) when the
    /// identity already holds its limit of open streams.
    pub(super) async fn acquire_watch_slot(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
    ) -> Result<WatchSlot, ApiError> {
        let max = self.limits().watches_per_identity;
        if let Some(slot) = self.inner.watches.acquire(tenant(who), max) {
            return Ok(slot);
        }
        tracing::warn!(
            namespace = %who.namespace,
            service_account = %who.service_account,
            max,
            "watch refused: too many open watches for this identity"
        );
        self.audit(&call.event(Some(who), None, None, Outcome::Deny, "too_many_watches"))
            .await?;
        Err(ApiError::TooManyWatches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_issuer_namespace_and_account() {
        let who = WorkloadIdentity {
            issuer: "https://k8s.test".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            service_account_uid: None,
            pod_name: Some("web-0".into()),
            pod_uid: None,
        };
        assert_eq!(tenant(&who), "https://k8s.test shop/web");
    }

    #[test]
    fn slots_are_bounded_per_key_and_given_back_on_drop() {
        let counts = WatchCounts::default();
        let held: Vec<_> = (0..3)
            .map(|_| counts.acquire("a".into(), 3).unwrap())
            .collect();
        assert!(counts.acquire("a".into(), 3).is_none());
        let other = counts.acquire("b".into(), 3);
        assert!(other.is_some(), "another key has its own slots");
        drop(held);
        drop(other);
        assert!(counts.acquire("a".into(), 3).is_some());
        assert!(
            counts.open.lock().unwrap().len() <= 1,
            "empty keys are removed"
        );
    }
}
