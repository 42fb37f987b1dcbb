//! The gRPC adapter: authenticates, validates, authorizes, then asks the store.
//!
//! Every RPC follows the same order: identity from the bearer token, paths
//! validated into [`SecretPath`]s, the policy decision, and only then the
//! store. Each decision is logged (without values) on target `coffer::decision`:
//! every one at `debug`; at `info` only denials and a summary of the counts
//! per RPC every minute (the audit trail is the per-request record).
//!
//! One [`Broker`] serves both gRPC services; each lives in its own file:
//! `workload.rs` (`SecretBroker`: Get, Watch, Ack), `watch/` (the state
//! machine behind each watch stream), `acks.rs` (the acknowledgement table)
//! and `operator.rs` (`SecretOperator`). What every RPC shares: `call.rs`
//! (who calls, and the audit records of the call) and `decisions.rs` (the
//! policy decision, logged and counted).

mod acks;
mod call;
mod decisions;
mod leases;
mod limits;
mod list;
mod operator;
mod watch;
mod workload;

use std::sync::Arc;

use coffer_proto::{SecretData, v1};
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

pub use acks::AckLimits;
pub use decisions::DECISION_SUMMARY_EVERY;
pub use leases::MAX_LEASES_LISTED;
pub use limits::{
    BYTES_PER_WATCH, DEFAULT_MAX_WATCHES, Limits, cgroup_memory_limit, default_max_watches,
    max_watches_for_memory,
};

use crate::{
    audit::AuditLog,
    auth::{Authenticator, WorkloadIdentity},
    error::ApiError,
    path::SecretPath,
    policy::Policy,
    store::{SecretStore, StoredSecret},
};
use call::{Call, Caller, read_reason};
use decisions::{Allowed, DecisionCounts};

/// The most paths one GetSecrets or WatchSecrets call may name.
pub const MAX_PATHS_PER_CALL: usize = 256;

/// The broker: cheap to clone, all clones share state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    authn: Arc<dyn Authenticator>,
    policy: tokio::sync::watch::Sender<Arc<Policy>>,
    store: Arc<dyn SecretStore>,
    acks: acks::AckTable,
    shutdown: CancellationToken,
    /// Set once, before serving: reading it on every request takes no
    /// lock.
    audit: std::sync::OnceLock<AuditLog>,
    limits: RwLock<Limits>,
    watches: limits::WatchCounts,
    peers: std::sync::OnceLock<crate::peers::Peers>,
    decisions: DecisionCounts,
    fanout: watch::FanOut,
}

impl Broker {
    /// A broker over these parts.
    pub fn new(authn: Arc<dyn Authenticator>, policy: Policy, store: Arc<dyn SecretStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                authn,
                policy: tokio::sync::watch::Sender::new(Arc::new(policy)),
                store,
                acks: acks::AckTable::default(),
                shutdown: CancellationToken::new(),
                audit: std::sync::OnceLock::new(),
                limits: RwLock::new(Limits::default()),
                watches: limits::WatchCounts::default(),
                peers: std::sync::OnceLock::new(),
                decisions: DecisionCounts::default(),
                fanout: watch::FanOut::default(),
            }),
        }
    }

    /// Records every decision (and authentication failure) to `audit`.
    /// Set it once, before serving (a second trail is refused with a
    /// warning): a watch stream learns at its opening whether its updates
    /// are audited.
    pub fn with_audit(self, audit: AuditLog) -> Self {
        if self.inner.audit.set(audit).is_err() {
            tracing::warn!("an audit trail was already set; keeping the first");
            return self;
        }
        self.audit_lease_actions();
        self
    }

    /// The token issuers the broker trusts (a policy must fit them: see
    /// [`Policy::check_issuers`]).
    pub fn issuers(&self) -> Vec<String> {
        self.inner.authn.issuers()
    }

    fn audit_log(&self) -> Option<&AuditLog> {
        self.inner.audit.get()
    }

    /// Writes what the audit trail still holds in memory (aggregated
    /// failure counts); call at shutdown.
    pub async fn flush_audit(&self) {
        if let Some(log) = self.audit_log()
            && let Err(error) = log.flush().await
        {
            tracing::error!(%error, "audit trail not flushed at shutdown");
        }
    }

    /// Bounds the rollout table behind `RotationStatus` (see [`AckLimits`]).
    pub fn with_ack_limits(self, limits: AckLimits) -> Self {
        self.inner.acks.set_limits(limits);
        self
    }

    /// Tells `peers` of every write and merges their rollout answers (see
    /// [`crate::peers`]). Set once, before serving.
    pub fn with_peers(self, peers: crate::peers::Peers) -> Self {
        if self.inner.peers.set(peers).is_err() {
            tracing::warn!("peers were already set; keeping the first set");
        }
        self
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.policy.borrow())
    }

    /// Replaces the policy. New requests use it at once; open watches are
    /// checked again and closed if they lost access.
    pub fn set_policy(&self, policy: Policy) {
        self.inner.policy.send_replace(Arc::new(policy));
    }

    /// The store's health, if it reports one (see [`SecretStore::health`]).
    pub fn store_health(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.inner.store.health()
    }

    /// Cancelled when the broker shuts down (see [`Broker::shut_down`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Shuts down: cancels [`Broker::shutdown_token`] and ends every watch
    /// stream with `UNAVAILABLE`. Streams wait on the policy channel, which
    /// is bumped here after the cancel, so each wakes and sees it.
    pub fn shut_down(&self) {
        self.inner.shutdown.cancel();
        self.inner.policy.send_modify(|_| {});
    }

    /// Reads for `who`, who is charged its share of the store's backend.
    async fn read(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<v1::Secret, ApiError> {
        self.read_as(who, path, path.to_string(), version).await
    }

    /// [`Broker::read`], the answer naming the path as `text`: the caller's
    /// own string, which [`SecretPath::parse`] accepted as it is (a path
    /// has one spelling), so it is not formatted again.
    async fn read_as(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        text: String,
        version: Option<u64>,
    ) -> Result<v1::Secret, ApiError> {
        let store = &self.inner.store;
        // Only a leased path is issued per holder; every other read needs
        // just the tenant it is charged to (no copies of the identity).
        let stored = if store.shared(path.name()) {
            store
                .get_for(limits::tenant_of(who), path.name(), version)
                .await?
        } else {
            store.get_held(&holder(who), path.name(), version).await?
        };
        to_wire(path, text, stored)
    }
}

/// The caller as a store sees it (leased secrets are issued per pod).
pub(super) fn holder(who: &WorkloadIdentity) -> crate::store::Holder {
    crate::store::Holder {
        namespace: who.namespace.clone(),
        service_account: who.service_account.clone(),
        issuer: who.issuer.clone(),
        pod_name: who.pod_name.clone(),
        pod_uid: who.pod_uid.clone(),
    }
}

/// Builds the wire form, selecting one key of a map when the path asks.
/// The value moves into the message, which wipes it on drop.
fn to_wire(path: &SecretPath, text: String, stored: StoredSecret) -> Result<v1::Secret, ApiError> {
    let data = match (path.key(), stored.data) {
        (None, data) => data,
        (Some(key), SecretData::Map(mut map)) => {
            SecretData::Bytes(map.remove(key).ok_or(crate::store::StoreError::NotFound)?)
        }
        (Some(_), SecretData::Bytes(_)) => return Err(crate::store::StoreError::NotFound.into()),
    };
    Ok(v1::Secret {
        path: text,
        version: stored.version,
        content_type: stored.content_type,
        value: Some(data.into()),
        metadata: Some(v1::SecretMetadata {
            created_at: Some(stored.created_at.into()),
            ttl_hint: stored
                .ttl_hint
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            labels: stored.labels.into_iter().collect(),
        }),
    })
}

/// A folder or path prefix as `ListSecrets` and `ListLeases` take it:
/// trailing slashes dropped, empty for the root, otherwise a valid path
/// without a `#key` (`what` names it in the error).
fn parse_folder(raw: &str, what: &str) -> Result<String, ApiError> {
    let folder = raw.trim_end_matches('/');
    if !folder.is_empty() && SecretPath::parse(folder)?.key().is_some() {
        return Err(ApiError::InvalidArgument(format!("{what} has no '#key'")));
    }
    Ok(folder.to_string())
}

fn parse_paths<'a>(
    raw: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<SecretPath>, ApiError> {
    if raw.len() == 0 {
        return Err(ApiError::InvalidArgument("no paths given".into()));
    }
    if raw.len() > MAX_PATHS_PER_CALL {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_PATHS_PER_CALL} paths per call"
        )));
    }
    let mut paths: Vec<SecretPath> = raw.map(SecretPath::parse).collect::<Result<_, _>>()?;
    paths.sort();
    paths.dedup();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_drops_trailing_slashes_and_refuses_a_key_or_a_bad_path() {
        assert_eq!(parse_folder("", "a folder").unwrap(), "");
        assert_eq!(parse_folder("/", "a folder").unwrap(), "");
        assert_eq!(parse_folder("shop/db//", "a folder").unwrap(), "shop/db");
        let keyed = parse_folder("shop/db#password", "a path prefix").unwrap_err();
        assert!(
            matches!(&keyed, ApiError::InvalidArgument(m) if m == "a path prefix has no '#key'"),
            "{keyed:?}"
        );
        assert!(matches!(
            parse_folder("shop/../db", "a folder"),
            Err(ApiError::InvalidPath(_))
        ));
    }
}
