//! Where secrets come from: the [`SecretStore`] trait and its implementations.
//!
//! A store deals in base paths (`app/db`); selecting one key of a map
//! (`app/db#password`) is the broker's job, so every store gets it for free.

pub mod dev;
pub mod vault;

use crate::path::SecretName;
use std::{collections::BTreeMap, time::Duration, time::SystemTime};

use async_trait::async_trait;
use coffer_proto::SecretData;
use tokio::sync::watch;

/// One version of a secret as a store returns it.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// The version; versions start at 1 and only grow.
    pub version: u64,
    /// The value.
    pub data: SecretData,
    /// A MIME type hint; may be empty.
    pub content_type: String,
    /// When the version was created.
    pub created_at: SystemTime,
    /// How long clients may use it without asking again, if the store knows.
    pub ttl_hint: Option<Duration>,
    /// Non-secret labels.
    pub labels: BTreeMap<String, String>,
}

/// A new version to write.
#[derive(Debug, Clone)]
pub struct SecretWrite {
    /// The value.
    pub data: SecretData,
    /// A MIME type hint; may be empty.
    pub content_type: String,
    /// Non-secret labels.
    pub labels: BTreeMap<String, String>,
    /// Write only if the current version is this (0: only if absent).
    pub cas: Option<u64>,
}

impl SecretWrite {
    /// An unconditional write of `data` with a content type and no labels.
    pub fn new(data: SecretData, content_type: impl Into<String>) -> Self {
        Self {
            data,
            content_type: content_type.into(),
            labels: BTreeMap::new(),
            cas: None,
        }
    }
}

/// Non-secret facts about one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    pub created_at: SystemTime,
    pub deleted: bool,
    pub destroyed: bool,
}

/// A secret's versions and its labels, from its metadata alone
/// ([`SecretStore::versions_with_labels`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionList {
    /// The version reads return.
    pub current: u64,
    /// Every version's facts, oldest first.
    pub versions: Vec<VersionInfo>,
    /// The secret's non-secret labels (e.g. the rotation spec).
    pub labels: BTreeMap<String, String>,
}

/// Who reads a secret, as the verified token named it (never anything
/// from a request): the holder of a leased credential (docs/dynamic.md),
/// and the owner a lease listing or audit record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The token's issuer.
    pub issuer: String,
    /// The caller's namespace.
    pub namespace: String,
    /// The caller's service account.
    pub service_account: String,
    /// The pod's name, for pod-bound tokens.
    pub pod_name: Option<String>,
    /// The pod's uid, for pod-bound tokens.
    pub pod_uid: Option<String>,
}

/// A caller as a store's backend budget counts it: its issuer, namespace
/// and service account. Made into text ([`Tenant::key`]) only by a store
/// that charges it, and only when it does (a read that misses its cache),
/// so a cached read allocates nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant<'a> {
    /// The token's issuer.
    pub issuer: &'a str,
    /// The caller's namespace.
    pub namespace: &'a str,
    /// The caller's service account.
    pub service_account: &'a str,
}

impl Tenant<'_> {
    /// The opaque key of the tenant's share,
    /// `<issuer> <namespace>/<service account>`.
    pub fn key(&self) -> String {
        // Built by hand: `format!` cost a third of a microsecond.
        let parts = [self.issuer, " ", self.namespace, "/", self.service_account];
        let mut key = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            key.push_str(part);
        }
        key
    }
}

impl<'a> From<&'a Holder> for Tenant<'a> {
    fn from(holder: &'a Holder) -> Self {
        Self {
            issuer: &holder.issuer,
            namespace: &holder.namespace,
            service_account: &holder.service_account,
        }
    }
}

impl Holder {
    /// The caller's tenant, `<issuer> <namespace>/<service account>`: the
    /// opaque key of its share of a backend (see [`SecretStore::get_for`]).
    pub fn tenant(&self) -> String {
        Tenant::from(self).key()
    }

    /// The caller's pod (its uid, else its name), for pod-bound tokens.
    pub fn pod(&self) -> Option<&str> {
        self.pod_uid.as_deref().or(self.pod_name.as_deref())
    }
}

/// A non-secret view of one live lease (docs/dynamic.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The holder key (tenant, and pod unless leased per service account).
    pub holder: String,
    /// Who holds it (the first reader, for a lease per service account).
    pub owner: Holder,
    /// The broker path.
    pub path: String,
    /// Vault's lease id (`pki:<serial>` for a certificate).
    pub lease_id: String,
    /// The credential's version.
    pub version: u64,
    /// When the credential was issued.
    pub issued_at: SystemTime,
    /// When the lease ends unless renewed.
    pub expires_at: SystemTime,
    /// Since when renewals fail, and the kind of failure (`unavailable`,
    /// `refused`, `error`): never Vault's text.
    pub failing: Option<(SystemTime, &'static str)>,
}

/// What the broker itself did with a lease, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// A credential was issued.
    Issue,
    /// A renewal failed (the credential is kept until it expires).
    RenewFailed,
    /// A lease was revoked.
    Revoke,
}

impl LeaseAction {
    /// The `rpc` field of the audit record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "LeaseIssue",
            Self::RenewFailed => "LeaseRenewFailed",
            Self::Revoke => "LeaseRevoke",
        }
    }
}

/// One lease action of the broker's own, with a fixed-vocabulary reason.
#[derive(Debug, Clone)]
pub struct LeaseEvent {
    pub action: LeaseAction,
    pub lease_id: String,
    pub path: String,
    pub version: u64,
    pub owner: Holder,
    /// `first_read`, `rotated`, `expired`, `unavailable`, `holder_gone`,
    /// `operator`, ...
    pub reason: &'static str,
}

/// What an operator does to some versions of a secret
/// ([`SecretStore::change_versions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    /// Soft-delete: the version reads as deleted until undeleted.
    Delete,
    /// Restore soft-deleted versions.
    Undelete,
    /// Destroy the versions' values for good.
    Destroy,
}

impl VersionChange {
    /// What a store that cannot make the change says it cannot do.
    fn doing(self) -> &'static str {
        match self {
            Self::Delete => "deleting versions",
            Self::Undelete => "undeleting versions",
            Self::Destroy => "destroying versions",
        }
    }
}

/// Why a store could not do what was asked. Backend detail stays in the
/// variant for the server log; clients see only the category.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("secret not found")]
    NotFound,
    #[error("version {0} not found")]
    VersionNotFound(u64),
    #[error("version {0} was deleted or destroyed")]
    VersionDeleted(u64),
    #[error("check-and-set failed: current version is {current}")]
    CasMismatch { current: u64 },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The caller used up its share of the backend's capacity.
    #[error("too many backend requests from this caller")]
    Throttled,
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
    #[error("store failure: {0}")]
    Internal(String),
}

/// A source of secrets.
#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// A version of `path`, or the current one.
    async fn get(
        &self,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError>;

    /// Like [`get`](Self::get), on behalf of `tenant`, so a store can give
    /// each caller a fair share of its backend. Stores without a shared
    /// backend budget just `get`.
    async fn get_for(
        &self,
        tenant: Tenant<'_>,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        let _ = tenant;
        self.get(path, version).await
    }

    /// Like [`get_for`](Self::get_for), for `holder`: a store issuing a
    /// credential per workload (a leased path) gives each holder its own.
    /// Other stores ignore the pod.
    async fn get_held(
        &self,
        holder: &Holder,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.get_for(Tenant::from(holder), path, version).await
    }

    /// Writes a new version and returns its number.
    async fn put(&self, path: &SecretName, write: SecretWrite) -> Result<u64, StoreError>;

    /// The current version and every version's facts.
    async fn versions(&self, path: &SecretName) -> Result<(u64, Vec<VersionInfo>), StoreError>;

    /// Like [`versions`](Self::versions), with the secret's labels, taken
    /// from the same metadata: no value is read (on a leased path a read
    /// would issue a credential). A store that keeps no labels answers none.
    async fn versions_with_labels(&self, path: &SecretName) -> Result<VersionList, StoreError> {
        let (current, versions) = self.versions(path).await?;
        Ok(VersionList {
            current,
            versions,
            labels: BTreeMap::new(),
        })
    }

    /// Makes `to_version`'s value current again, as a new version.
    async fn rollback(&self, path: &SecretName, to_version: u64) -> Result<u64, StoreError> {
        let old = self.get(path, Some(to_version)).await?;
        self.put(
            path,
            SecretWrite {
                data: old.data,
                content_type: old.content_type,
                labels: old.labels,
                cas: None,
            },
        )
        .await
    }

    /// Deletes, undeletes or destroys `versions` of `path` (empty: the
    /// current one).
    async fn change_versions(
        &self,
        path: &SecretName,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<(), StoreError> {
        let _ = (path, versions);
        Err(StoreError::Unsupported(change.doing()))
    }

    /// The names directly under `folder` (`""`: the top); folders end with `/`.
    async fn list(&self, _folder: &str) -> Result<Vec<String>, StoreError> {
        Err(StoreError::Unsupported("listing"))
    }

    /// Like [`list`](Self::list), on behalf of `tenant` (see
    /// [`get_for`](Self::get_for)): a store with a shared backend budget
    /// charges the listing to the caller's share.
    async fn list_for(&self, tenant: &str, folder: &str) -> Result<Vec<String>, StoreError> {
        let _ = tenant;
        self.list(folder).await
    }

    /// Re-reads what the store knows of `path` now (a peer replica changed
    /// it), telling subscribers at once rather than at the next poll.
    async fn refresh(&self, _path: &SecretName) -> Result<(), StoreError> {
        Ok(())
    }

    /// The current version of `path` (0 while it does not exist), updated on
    /// every change. Many watchers of one path share one subscription.
    fn subscribe(&self, path: &SecretName) -> watch::Receiver<u64>;

    /// Like [`subscribe`](Self::subscribe), for `holder`'s own credential on
    /// a leased path; holding the receiver keeps the holder's lease alive.
    fn subscribe_held(&self, holder: &Holder, path: &SecretName) -> watch::Receiver<u64> {
        let _ = holder;
        self.subscribe(path)
    }

    /// Whether every caller reads the same value at a version of `path`, so
    /// one read may be shared among them (the watch fan-out) and the broker
    /// reads it with [`get_for`](Self::get_for). `false` for a leased path,
    /// where each holder has a credential of its own, read with
    /// [`get_held`](Self::get_held).
    fn shared(&self, path: &SecretName) -> bool {
        let _ = path;
        true
    }

    /// The store's leases, if it issues credentials per workload; stores
    /// without leases have none to list, revoke or audit.
    fn lease_store(&self) -> Option<&dyn LeaseStore> {
        None
    }

    /// Whether the backend can serve (`true`) or not, updated as it changes;
    /// `None` for stores that are always up. The server reports it on
    /// `grpc.health.v1`.
    fn health(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// The leases of a store that issues a credential per workload (leased
/// secrets, docs/dynamic.md), reached through [`SecretStore::lease_store`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The lease that gave `holder` version `version` of the leased `path`
    /// (for the audit trail); `None` for paths without leases.
    fn lease_of(&self, holder: &Holder, path: &SecretName, version: u64) -> Option<String>;

    /// Every live lease, without credentials.
    fn leases(&self) -> Vec<LeaseInfo>;

    /// The broker paths a lease with this id could belong to, whether it
    /// exists or not (a revocation is authorized on them, so that a caller
    /// without access cannot learn whether an id exists).
    fn lease_paths(&self, lease_id: &str) -> Vec<String>;

    /// Revokes `lease_id` now; its holder's watches get a new credential.
    /// [`StoreError::NotFound`] when no live lease has this id.
    async fn revoke_lease(&self, lease_id: &str) -> Result<LeaseInfo, StoreError>;

    /// The broker's own lease actions (issue, failed renewal, revoke), for
    /// the audit trail: the receiver, once; `None` afterwards.
    fn lease_events(&self) -> Option<tokio::sync::mpsc::Receiver<LeaseEvent>>;
}
