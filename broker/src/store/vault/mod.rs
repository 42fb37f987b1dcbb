//! The production store: HashiCorp Vault or OpenBao, through `vaultrs`.
//!
//! # Paths
//!
//! A broker path such as `shop/db` is routed by the longest matching
//! `mounts[].prefix` to a KV mount (v1 or v2) and a path inside it. A Vault
//! secret is a map of keys, returned whole as [`SecretData::Map`]; the broker
//! selects one key when the client asks for `shop/db#password`, so `shop/db`
//! addresses the whole map and `shop/db#password` one value. A write of
//! opaque bytes is stored as the single key `value`.
//!
//! # Reads
//!
//! * Concurrent reads of the same path and version make one Vault call, and
//!   values are cached ([`read_cache`]).
//! * A version read fills the "latest" entry only when the metadata (or a
//!   latest read, or our own write) confirmed that version is current, so
//!   each new version is read from Vault once, and reading an old version of
//!   a cold path never makes it "latest" for everyone else.
//! * A deleted or destroyed KV v2 version is [`StoreError::VersionDeleted`],
//!   never an empty value.
//! * While Vault is unreachable or sealed, cached values are served until
//!   they are `cache.maxStaleness` old; then [`StoreError::Unavailable`], and
//!   [`SecretStore::health`] reports not serving.
//!
//! # The rooms
//!
//! [`backend`] makes every Vault call (limits, retries, relogin through
//! [`session`], [`health`]); [`kv`] holds the KV engine calls; [`poll`] the
//! version bookkeeping and the pollers; [`leases`] the credentials issued
//! per workload. This file ties them into the [`SecretStore`].
//!
//! [`SecretData::Map`]: coffer_proto::SecretData::Map

mod backend;
pub mod config;
mod consistency;
mod health;
mod kv;
mod leases;
mod limits;
mod nodes;
mod poll;
mod read_cache;
mod session;
mod settle;

use crate::path::SecretName;
use std::sync::{Arc, atomic::Ordering};

use async_trait::async_trait;
use futures::future::FutureExt;
use tokio::sync::watch;

pub use crate::store::LeaseInfo;
pub use config::{AuthConfig, MountConfig, VaultConfig};
pub use kv::BYTES_KEY;
pub use leases::LEASE_EXPIRES_LABEL;

use backend::Backend;
use config::PollConfig;
use leases::Leases;
use limits::TenantLimiter;
use poll::{Polled, Versions};
use read_cache::{CacheKey, Flight, Lookup, ReadCache};
use session::Session;

use super::{
    Holder, LeaseEvent, LeaseStore, SecretStore, SecretWrite, StoreError, StoredSecret, Tenant,
    VersionChange, VersionInfo, VersionList,
};

/// A [`SecretStore`] backed by Vault or OpenBao.
pub struct VaultStore {
    inner: Arc<Inner>,
}

struct Inner {
    vault: Arc<Backend>,
    /// Each caller's share of Vault requests.
    tenants: TenantLimiter,
    reads: ReadCache,
    versions: Versions,
    /// Leased credentials, per holder and path.
    leases: Arc<Leases>,
}

impl VaultStore {
    /// Logs in to Vault and starts the token renewer and health prober.
    /// Fails when the configuration is invalid or the first login is refused.
    pub async fn connect(config: VaultConfig) -> Result<Self, StoreError> {
        let config = Self::prepare(config)?;
        let session = Session::connect(Arc::clone(&config)).await?;
        let store = Self::assemble(config, session, true);
        store.session().spawn_renewer(store.shutdown());
        Ok(store)
    }

    /// Tries to log in once; if that fails, starts anyway and retries the
    /// first login in the background with jittered backoff. Until it
    /// succeeds [`health`] reports not serving and every request fails with
    /// [`StoreError::Unavailable`]. Fails only when the configuration is
    /// invalid.
    ///
    /// [`health`]: SecretStore::health
    pub async fn start(config: VaultConfig) -> Result<Self, StoreError> {
        let config = Self::prepare(config)?;
        let session = Session::new(Arc::clone(&config))?;
        session.check_node().await;
        if let Err(error) = session.relogin(0).await {
            tracing::warn!(%error, "Vault login failed; starting anyway, not serving until it succeeds");
        } else {
            let store = Self::assemble(config, session, true);
            store.session().spawn_renewer(store.shutdown());
            return Ok(store);
        }
        let store = Self::assemble(config, session, false);
        let weak = Arc::downgrade(&store.inner.vault);
        let session = Arc::clone(store.session());
        let shutdown = store.shutdown();
        tokio::spawn(async move {
            if !session.retry_first_login(&shutdown).await {
                return;
            }
            session.spawn_renewer(shutdown);
            if let Some(vault) = weak.upgrade() {
                vault.health.contact_ok();
            }
        });
        Ok(store)
    }

    fn prepare(config: VaultConfig) -> Result<Arc<VaultConfig>, StoreError> {
        config
            .validate()
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        // vaultrs is built without a TLS provider; ours is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Arc::new(config))
    }

    /// The store around a session, with its health prober running.
    fn assemble(config: Arc<VaultConfig>, session: Arc<Session>, serving: bool) -> Self {
        let vault = Arc::new(Backend::new(Arc::clone(&config), session, serving));
        tokio::spawn(backend::probe_loop(
            Arc::downgrade(&vault),
            vault.shutdown.clone(),
        ));
        let inner = Arc::new(Inner {
            tenants: TenantLimiter::new(
                config.limits.per_identity_requests_per_second,
                config.limits.per_identity_burst,
                config.limits.per_identity_max_wait,
            ),
            reads: ReadCache::new(&config.cache),
            versions: Versions::default(),
            leases: leases::start(Arc::clone(&vault)),
            vault,
        });
        Self { inner }
    }

    fn session(&self) -> &Arc<Session> {
        &self.inner.vault.session
    }

    fn shutdown(&self) -> tokio_util::sync::CancellationToken {
        self.inner.vault.shutdown.clone()
    }

    /// How many secret reads (not metadata polls) were sent to Vault.
    pub fn vault_reads(&self) -> u64 {
        self.inner.vault.secret_reads.load(Ordering::Relaxed)
    }

    /// The live leases (no credentials), for status and tests.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.inner.leases.list()
    }

    /// How many paths have a poller (one per watched path, however many
    /// watchers it has).
    pub fn watched_paths(&self) -> usize {
        self.inner.versions.watched_paths()
    }

    /// The names under `path` (a folder), as Vault lists them.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, StoreError> {
        kv::list(&self.inner.vault, path, None).await
    }
}

impl Drop for VaultStore {
    fn drop(&mut self) {
        self.inner.vault.shutdown.cancel();
    }
}

impl Inner {
    /// Charges `tenant` one request of its share, or refuses
    /// ([`StoreError::Throttled`]) when it is over it.
    async fn charge(&self, tenant: &str, path: &str) -> Result<(), StoreError> {
        self.tenants.acquire(tenant).await.map_err(|_| {
            tracing::debug!(path, "a caller is over its share of Vault requests");
            crate::metrics::backend_throttled();
            StoreError::Throttled
        })
    }

    /// [`VaultStore::list`] on behalf of `tenant`, who is charged its share
    /// of Vault requests and waits for a turn at the request ceiling no
    /// longer than `perIdentityMaxWait` (else [`StoreError::Throttled`]).
    /// Folders above the mounts cost nothing.
    async fn list_for(&self, tenant: &str, path: &str) -> Result<Vec<String>, StoreError> {
        // A folder Vault is not asked about (above the mounts, or not
        // listable) costs the caller nothing.
        if kv::route(&self.vault, path).is_ok() {
            self.charge(tenant, path).await?;
        }
        let max_wait = self.vault.config.limits.per_identity_max_wait;
        kv::list(&self.vault, path, Some(max_wait)).await
    }

    /// Records that `version` exists, so the current one is at least that.
    fn note_version(&self, path: &str, version: u64) {
        if self.versions.record(path, version) {
            self.superseded(path, version);
        }
    }

    /// The cache learns of a newer version before the watchers do, so a
    /// watcher reading on the news never gets the older value.
    fn superseded(&self, path: &str, version: u64) {
        self.reads.superseded(path, version);
        self.versions.notify(path, version);
    }

    /// A read from the cache, the negative cache, a read already in flight,
    /// or Vault; only the last costs `tenant` a share of the budget.
    async fn read(
        self: &Arc<Self>,
        tenant: Option<Tenant<'_>>,
        path: &str,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        let mut key: CacheKey = (path.to_string(), version);
        let mut lookup = self.reads.lookup(&key);
        // The latest, not cached, of a path whose current version was said
        // within the cache TTL (a write, a poll): read as that version, so
        // a Get and the watchers reading the version just written share one
        // Vault read.
        if version.is_none()
            && matches!(lookup, Lookup::Miss { .. })
            && let Some(current) = self.versions.recently_confirmed(path, self.reads.ttl())
        {
            key = (path.to_string(), Some(current));
            lookup = self.reads.lookup(&key);
        }
        let joining = match lookup {
            Lookup::Hit(hit) => {
                crate::metrics::store_cache("hit");
                return Ok(hit);
            }
            Lookup::Missing(missing) => return Err(missing),
            Lookup::Miss { joining } => joining,
        };
        crate::metrics::store_cache(if joining { "coalesced" } else { "miss" });
        // The caller who starts a read is charged its share of Vault reads
        // inside that read, so that the flight exists from the first miss
        // on: pods of one service account starting at once join it instead
        // of each booking a share (and all but a burst being refused).
        let mut own_account = false;
        loop {
            let mut started = false;
            let flight = self.reads.fly(&key, || {
                started = true;
                Arc::clone(self)
                    .fetch_and_cache(key.clone(), tenant.map(|t| t.key()))
                    .boxed()
                    .shared()
            });
            let read = match flight {
                Flight::Landed(hit) => return Ok(hit),
                Flight::Read(read) => read,
            };
            return match read.await {
                Ok(secret) => Ok(secret),
                // The caller who started the read was over its share; one
                // that only joined asks again on its own account, so an
                // identity over its share cannot make others' reads fail.
                Err(error)
                    if matches!(*error, StoreError::Throttled) && !started && !own_account =>
                {
                    own_account = true;
                    continue;
                }
                Err(error) => match &*error {
                    StoreError::Unavailable(detail) => match self.reads.stale(&key) {
                        Some(secret) => {
                            tracing::warn!(path, error = %detail, "Vault unavailable; serving a cached value");
                            Ok(secret)
                        }
                        None => Err(StoreError::Unavailable(detail.clone())),
                    },
                    other => Err(other.clone()),
                },
            };
        }
    }

    /// Reads Vault, caches, and tells the bookkeeping what it learned.
    /// `tenant`, the caller who started the read, is charged its share
    /// first.
    async fn fetch_and_cache(
        self: Arc<Self>,
        key: CacheKey,
        tenant: Option<String>,
    ) -> Result<StoredSecret, Arc<StoreError>> {
        if let Some(tenant) = &tenant
            && let Err(throttled) = self.charge(tenant, &key.0).await
        {
            self.reads.land(&key);
            return Err(Arc::new(throttled));
        }
        let result = settle::read(&self.vault, &self.versions, &key.0, key.1).await;
        let latest = match &result {
            Ok(secret) => {
                key.1.is_none() || self.versions.is_confirmed_current(&key.0, secret.version)
            }
            Err(_) => false,
        };
        // "Not found" for what the store saw exist is a lagging node, not
        // an answer to remember; nor is it while the node in use is not
        // known to be the active one (a standby may not have it yet).
        let known = self.versions.newest(&key.0);
        let remember_missing =
            !settle::known_to_exist(key.1, known) && self.vault.session.on_active_node();
        self.reads.keep(&key, &result, latest, remember_missing);
        if let Ok(secret) = &result {
            if key.1.is_none() {
                self.note_current(&key.0, secret.version);
            } else {
                self.note_version(&key.0, secret.version);
            }
        }
        self.reads.land(&key);
        result.map_err(Arc::new)
    }
}

impl Polled for Inner {
    fn versions(&self) -> &Versions {
        &self.versions
    }

    fn poll_config(&self) -> &PollConfig {
        &self.vault.config.poll
    }

    fn current_version(&self, path: &str) -> impl Future<Output = Result<u64, StoreError>> + Send {
        kv::current_version(&self.vault, path)
    }

    /// Records that `version` is current (metadata, a latest read, a write).
    fn note_current(&self, path: &str, version: u64) {
        if self.versions.record_current(path, version) {
            self.superseded(path, version);
        }
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    async fn get(
        &self,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.inner.read(None, path, version).await
    }

    async fn get_for(
        &self,
        tenant: Tenant<'_>,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.inner.read(Some(tenant), path, version).await
    }

    async fn get_held(
        &self,
        holder: &Holder,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        match self.inner.vault.config.leased_mount(path) {
            Some(mount) => leases::get(&self.inner.leases, holder, path, mount, version).await,
            None => {
                self.inner
                    .read(Some(Tenant::from(holder)), path, version)
                    .await
            }
        }
    }

    fn shared(&self, path: &SecretName) -> bool {
        self.inner.vault.config.leased_mount(path).is_none()
    }

    fn lease_store(&self) -> Option<&dyn LeaseStore> {
        Some(self)
    }

    fn subscribe_held(&self, holder: &Holder, path: &SecretName) -> watch::Receiver<u64> {
        match self.inner.vault.config.leased_mount(path) {
            Some(mount) => leases::subscribe(&self.inner.leases, holder, path, mount),
            None => self.subscribe(path),
        }
    }

    async fn put(&self, path: &SecretName, write: SecretWrite) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let known = inner.versions.newest(path);
        let version = kv::write(&inner.vault, path, &write, known).await?;
        inner.reads.forget(path);
        inner.note_current(path, version);
        Ok(version)
    }

    async fn versions(&self, path: &SecretName) -> Result<(u64, Vec<VersionInfo>), StoreError> {
        let list = self.versions_with_labels(path).await?;
        Ok((list.current, list.versions))
    }

    async fn versions_with_labels(&self, path: &SecretName) -> Result<VersionList, StoreError> {
        let (mount, _) = kv::route(&self.inner.vault, path)?;
        if mount.kv == 1 {
            // KV v1 keeps neither versions nor labels: the path exists or not.
            self.get(path, None).await?;
            return Ok(kv::kv1_version_list());
        }
        let list = kv::version_list(&self.inner.vault, path).await?;
        self.inner.note_current(path, list.current);
        Ok(list)
    }

    fn subscribe(&self, path: &SecretName) -> watch::Receiver<u64> {
        let inner = &self.inner;
        let config = &inner.vault.config;
        // KV v1 keeps no versions to poll: its changes are not detected.
        let polled = |p: &str| config.route(p).is_some_and(|(m, _)| m.kv == 2);
        let (rx, new) = inner.versions.watch(path, polled);
        if new && kv::route(&inner.vault, path).is_ok_and(|(m, _)| m.kv == 2) {
            poll::spawn_poller(inner, path, inner.vault.shutdown.clone());
        }
        rx
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.vault.health.subscribe())
    }

    async fn change_versions(
        &self,
        path: &SecretName,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<(), StoreError> {
        kv::change_versions(&self.inner.vault, path, versions, change).await?;
        self.inner.reads.forget(path);
        Ok(())
    }

    async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        VaultStore::list(self, folder).await
    }

    async fn list_for(&self, tenant: &str, folder: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list_for(tenant, folder).await
    }

    async fn refresh(&self, path: &SecretName) -> Result<(), StoreError> {
        let version = kv::current_version(&self.inner.vault, path).await?;
        // Deletions keep the version number: drop what is cached either way.
        self.inner.reads.forget(path);
        self.inner.note_version(path, version);
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for VaultStore {
    fn lease_of(&self, holder: &Holder, path: &SecretName, version: u64) -> Option<String> {
        let mount = self.inner.vault.config.leased_mount(path)?;
        self.inner.leases.lease_of(holder, path, mount, version)
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        self.inner.leases.list()
    }

    fn lease_paths(&self, lease_id: &str) -> Vec<String> {
        self.inner.leases.paths(lease_id)
    }

    async fn revoke_lease(&self, lease_id: &str) -> Result<LeaseInfo, StoreError> {
        leases::revoke_lease(&self.inner.leases, lease_id).await
    }

    fn lease_events(&self) -> Option<tokio::sync::mpsc::Receiver<LeaseEvent>> {
        leases::take_events(&self.inner.leases)
    }
}
