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
//! * Concurrent reads of the same path and version make one Vault call
//!   (single-flight); the result is cached for `cache.ttl` in zeroizing
//!   buffers, the cache bounded by `cache.maxBytes`.
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
//! # Changes
//!
//! One poller per watched path reads the KV v2 metadata `current_version`
//! every `poll.interval` (jittered) and feeds the path's watch channel; it
//! stops when the last receiver goes. N watching pods cost one poll. KV v1
//! keeps no versions, so changes on a KV v1 mount are not detected.
//!
//! # Limits of vaultrs
//!
//! vaultrs parses responses into `serde_json::Value`, which is not zeroized;
//! values are moved out of it into zeroizing buffers without a further copy.

pub mod config;
mod leases;
mod limits;
mod session;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use coffer_proto::{SecretBytes, SecretData};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vaultrs::{
    api::kv2::{requests::ReadSecretRequest, responses::ReadSecretMetadataResponse},
    client::VaultClient,
    error::ClientError,
};

pub use crate::store::LeaseInfo;
pub use config::{AuthConfig, MountConfig, VaultConfig};
pub use leases::LEASE_EXPIRES_LABEL;
use limits::{Backoff, Class, RateLimiter, TenantLimiter, classify, jittered};
use session::Session;

use super::{
    Holder, LeaseEvent, SecretStore, SecretWrite, StoreError, StoredSecret, VersionInfo,
    VersionList,
};

/// The key under which opaque bytes are stored in a Vault map.
pub const BYTES_KEY: &str = "value";

type CacheKey = (String, Option<u64>);
type SharedRead = Shared<BoxFuture<'static, Result<StoredSecret, Arc<StoreError>>>>;

/// A [`SecretStore`] backed by Vault or OpenBao.
pub struct VaultStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<VaultConfig>,
    session: Arc<Session>,
    limiter: RateLimiter,
    tenants: TenantLimiter,
    cache: Mutex<Cache>,
    /// Recent "not found" answers, by path and version.
    missing: Mutex<NegativeCache>,
    inflight: Mutex<HashMap<CacheKey, SharedRead>>,
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// What is known about each path's versions.
    latest_known: Mutex<HashMap<String, Known>>,
    health: watch::Sender<bool>,
    last_contact: Mutex<Instant>,
    reads: AtomicU64,
    /// Leased credentials, per holder and path.
    leases: leases::Leases,
    shutdown: CancellationToken,
}

/// What the store knows about one path's versions.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The newest version seen anywhere (a lower bound of the current one).
    newest: u64,
    /// The version a latest read, the metadata or our own write said was
    /// current. Only this may let a versioned read fill the latest entry: an
    /// old version read first on a cold path must not become "latest".
    current: Option<u64>,
}

/// Why a Vault call failed, sorted for the caller.
#[derive(Debug)]
enum CallError {
    NotFound,
    Forbidden,
    Unavailable(String),
    Other(u16, String),
    /// A caller's request would have waited longer than it may for its
    /// turn at the request ceiling.
    Throttled,
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound => StoreError::NotFound,
            CallError::Forbidden => StoreError::Internal("Vault denied the broker's token".into()),
            CallError::Unavailable(detail) => StoreError::Unavailable(detail),
            CallError::Other(code, detail) => {
                StoreError::Internal(format!("Vault answered {code}: {detail}"))
            }
            CallError::Throttled => StoreError::Throttled,
        }
    }
}

impl VaultStore {
    /// Logs in to Vault and starts the token renewer and health prober.
    /// Fails when the configuration is invalid or the first login is refused.
    pub async fn connect(config: VaultConfig) -> Result<Self, StoreError> {
        let config = Self::prepare(config)?;
        let session = Session::connect(Arc::clone(&config)).await?;
        let store = Self::assemble(config, session, true);
        store
            .inner
            .session
            .spawn_renewer(store.inner.shutdown.clone());
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
        if let Err(error) = session.relogin(0).await {
            tracing::warn!(%error, "Vault login failed; starting anyway, not serving until it succeeds");
        } else {
            let store = Self::assemble(config, session, true);
            store
                .inner
                .session
                .spawn_renewer(store.inner.shutdown.clone());
            return Ok(store);
        }
        let store = Self::assemble(config, session, false);
        let weak = Arc::downgrade(&store.inner);
        let session = Arc::clone(&store.inner.session);
        let shutdown = store.inner.shutdown.clone();
        tokio::spawn(async move {
            if !session.retry_first_login(&shutdown).await {
                return;
            }
            session.spawn_renewer(shutdown);
            if let Some(inner) = weak.upgrade() {
                inner.contact_ok();
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
        let shutdown = CancellationToken::new();
        let inner = Arc::new(Inner {
            limiter: RateLimiter::new(config.limits.max_requests_per_second),
            tenants: TenantLimiter::new(
                config.limits.per_identity_requests_per_second,
                config.limits.per_identity_burst,
                config.limits.per_identity_max_wait,
            ),
            cache: Mutex::new(Cache::new(config.cache.max_bytes)),
            missing: Mutex::new(NegativeCache::new(
                config.cache.negative_ttl,
                config.cache.max_negative_entries,
            )),
            inflight: Mutex::default(),
            watchers: Mutex::default(),
            latest_known: Mutex::default(),
            health: watch::Sender::new(serving),
            last_contact: Mutex::new(Instant::now()),
            reads: AtomicU64::new(0),
            leases: leases::Leases::default(),
            shutdown,
            session,
            config,
        });
        let weak = Arc::downgrade(&inner);
        let token = inner.shutdown.clone();
        tokio::spawn(async move { probe_loop(weak, token).await });
        if inner.config.revokes_on_start() {
            // At start, for every revokeOnStart mount: not at a role's first read.
            let (weak, token) = (Arc::downgrade(&inner), inner.shutdown.clone());
            tokio::spawn(leases::registry_loop(weak, token));
        }
        Self { inner }
    }

    /// How many secret reads (not metadata polls) were sent to Vault.
    pub fn vault_reads(&self) -> u64 {
        self.inner.reads.load(Ordering::Relaxed)
    }

    /// The live leases (no credentials), for status and tests.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.inner.leases.list()
    }

    /// How many paths have a poller (one per watched path, however many
    /// watchers it has).
    pub fn watched_paths(&self) -> usize {
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The names under `path` (a folder), as Vault lists them.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, StoreError> {
        self.list_as(None, path).await
    }

    /// [`Self::list`] on behalf of `tenant`, who is charged its share of
    /// Vault requests and waits for a turn at the request ceiling no longer
    /// than `perIdentityMaxWait` (else [`StoreError::Throttled`]). A listing
    /// is never cached: each one is a Vault request.
    async fn list_as(&self, tenant: Option<&str>, path: &str) -> Result<Vec<String>, StoreError> {
        // Folders above the mounts (the root, most often) are known from the
        // configuration: listed without a Vault request.
        let above = self.inner.config.names_above_mounts(path);
        let (mount, inner_path) = match self.inner.route(path) {
            Ok(route) => route,
            Err(_) if !above.is_empty() => return Ok(above),
            Err(error) => return Err(error),
        };
        let max_wait = match tenant {
            Some(tenant) => {
                self.inner.charge(tenant, path).await?;
                Some(self.inner.config.limits.per_identity_max_wait)
            }
            None => None,
        };
        let name = mount.mount.clone();
        let result = if mount.kv == 2 {
            self.inner
                .call_within(max_wait, |c| {
                    let (name, p) = (name.clone(), inner_path.clone());
                    async move { vaultrs::kv2::list(&*c, &name, &p).await }
                })
                .await
        } else {
            self.inner
                .call_within(max_wait, |c| {
                    let (name, p) = (name.clone(), inner_path.clone());
                    async move {
                        vaultrs::kv1::list(&*c, &name, &p)
                            .await
                            .map(|r| r.data.keys)
                    }
                })
                .await
        };
        if matches!(result, Err(CallError::Throttled)) {
            tracing::debug!(path, "a listing waited too long for the request ceiling");
            crate::metrics::backend_throttled();
        }
        let mut keys = match result {
            Ok(keys) => keys,
            Err(CallError::NotFound) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        keys.extend(above);
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

impl Drop for VaultStore {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    fn route(&self, path: &str) -> Result<(MountConfig, String), StoreError> {
        match self.config.route(path) {
            // A leased path has one credential per holder: only
            // `get_held` and `subscribe_held` serve it.
            Some((m, _)) if m.is_leased() => {
                Err(StoreError::Unsupported("this operation on a leased path"))
            }
            Some((m, p)) => Ok((m.clone(), p)),
            None => Err(StoreError::NotFound),
        }
    }

    /// The leased mount serving exactly `path`, if any.
    fn leased_mount(&self, path: &str) -> Option<MountConfig> {
        self.config
            .route(path)
            .filter(|(m, _)| m.is_leased() && path == m.prefix.trim_matches('/'))
            .map(|(m, _)| m.clone())
    }

    fn contact_ok(&self) {
        *self.last_contact.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.health
            .send_if_modified(|serving| !std::mem::replace(serving, true));
    }

    fn contact_failed(&self) {
        let since = self
            .last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        if since > self.config.cache.max_staleness {
            self.health
                .send_if_modified(|serving| std::mem::replace(serving, false));
        }
    }

    /// Charges `tenant` one request of its share, or refuses
    /// ([`StoreError::Throttled`]) when it is over it.
    async fn charge(&self, tenant: &str, path: &str) -> Result<(), StoreError> {
        self.tenants.acquire(tenant).await.map_err(|_| {
            tracing::debug!(path, "a caller is over its share of Vault requests");
            crate::metrics::backend_throttled();
            StoreError::Throttled
        })
    }

    /// One Vault call with rate limiting, retries with backoff on transient
    /// failures, and one fresh login if the token turned out to be invalid.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.call_within(None, f).await
    }

    /// [`Self::call`], waiting for each turn at the request ceiling at most
    /// `max_wait` (`None`: as long as it takes), else [`CallError::Throttled`].
    async fn call_within<T, F, Fut>(&self, max_wait: Option<Duration>, f: F) -> Result<T, CallError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let limits = &self.config.limits;
        let mut backoff = Backoff::new(limits.initial_backoff, limits.max_backoff);
        let mut retries = 0;
        let mut relogged = false;
        loop {
            if !self.session.logged_in() {
                return Err(CallError::Unavailable("not logged in to Vault yet".into()));
            }
            self.limiter
                .acquire_within(max_wait)
                .await
                .map_err(|_| CallError::Throttled)?;
            let (client, generation) = self.session.client();
            crate::metrics::backend_read();
            let error = match f(client).await {
                Ok(value) => {
                    self.contact_ok();
                    return Ok(value);
                }
                Err(error) => error,
            };
            match classify(&error) {
                Class::NotFound => {
                    self.contact_ok();
                    return Err(CallError::NotFound);
                }
                Class::Forbidden if !relogged => {
                    relogged = true;
                    if self.session.recover_from_forbidden(generation).await {
                        continue;
                    }
                    crate::metrics::backend_error("forbidden");
                    return Err(CallError::Forbidden);
                }
                Class::Forbidden => {
                    crate::metrics::backend_error("forbidden");
                    return Err(CallError::Forbidden);
                }
                Class::Transient if retries < limits.max_retries => {
                    retries += 1;
                    let pause = backoff.next_delay();
                    tracing::debug!(error = %error, retry = retries, pause_ms = pause.as_millis() as u64, "Vault call failed; retrying");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return Err(CallError::Unavailable("shutting down".into())),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Class::Transient => {
                    crate::metrics::backend_error("unavailable");
                    self.contact_failed();
                    return Err(CallError::Unavailable(error.to_string()));
                }
                Class::Permanent => {
                    crate::metrics::backend_error("other");
                    let code = match &error {
                        ClientError::APIError { code, .. } => *code,
                        _ => 0,
                    };
                    return Err(CallError::Other(code, error.to_string()));
                }
            }
        }
    }

    /// Reads from Vault (no cache).
    async fn fetch(&self, path: &str, version: Option<u64>) -> Result<StoredSecret, StoreError> {
        let (mount, inner_path) = self.route(path)?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        if mount.kv == 1 {
            return self.fetch_kv1(&mount, &inner_path, version).await;
        }
        let name = mount.mount.clone();
        let result = self
            .call(|c| {
                let (name, p) = (name.clone(), inner_path.clone());
                async move {
                    let request = ReadSecretRequest::builder()
                        .mount(name)
                        .path(p)
                        .version(version)
                        .build()
                        .map_err(|e| ClientError::APIError {
                            code: 0,
                            errors: vec![e.to_string()],
                        })?;
                    vaultrs::api::exec_with_result(&*c, request).await
                }
            })
            .await;
        match result {
            Ok(response) => {
                let meta = response.metadata;
                if meta.destroyed || !meta.deletion_time.is_empty() || response.data.is_null() {
                    return Err(StoreError::VersionDeleted(meta.version));
                }
                Ok(StoredSecret {
                    version: meta.version,
                    data: to_secret_data(response.data)?,
                    content_type: String::new(),
                    created_at: parse_time(&meta.created_time),
                    ttl_hint: None,
                    labels: meta
                        .custom_metadata
                        .map(|m| m.into_iter().collect())
                        .unwrap_or_default(),
                })
            }
            Err(CallError::NotFound) => Err(self.explain_missing(path, version).await),
            Err(e) => Err(e.into()),
        }
    }

    /// A 404 on a KV v2 read: absent path, absent version, or deleted.
    async fn explain_missing(&self, path: &str, version: Option<u64>) -> StoreError {
        let meta = match self.metadata(path).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return StoreError::NotFound,
            Err(e) => return e,
        };
        let wanted = version.unwrap_or(meta.current_version);
        match meta.versions.get(&wanted.to_string()) {
            Some(v) if v.destroyed || !v.deletion_time.is_empty() => {
                StoreError::VersionDeleted(wanted)
            }
            _ if version.is_none() => StoreError::NotFound,
            _ => StoreError::VersionNotFound(wanted),
        }
    }

    async fn fetch_kv1(
        &self,
        mount: &MountConfig,
        inner_path: &str,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        let name = mount.mount.clone();
        let response = self
            .call(|c| {
                let (name, p) = (name.clone(), inner_path.to_string());
                async move { vaultrs::kv1::get_raw(&*c, &name, &p).await }
            })
            .await?;
        // KV v1 keeps one version; the path exists, the version does not.
        if let Some(v) = version.filter(|&v| v != 1) {
            return Err(StoreError::VersionNotFound(v));
        }
        Ok(StoredSecret {
            version: 1,
            data: to_secret_data(response.data)?,
            content_type: String::new(),
            // KV v1 keeps no creation time.
            created_at: UNIX_EPOCH,
            ttl_hint: None,
            labels: BTreeMap::new(),
        })
    }

    /// KV v2 metadata; `None` when the path does not exist.
    async fn metadata(&self, path: &str) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
        let (mount, inner_path) = self.route(path)?;
        if mount.kv != 2 {
            return Err(StoreError::Unsupported("metadata on a KV v1 mount"));
        }
        let name = mount.mount.clone();
        match self
            .call(|c| {
                let (name, p) = (name.clone(), inner_path.clone());
                async move { vaultrs::kv2::read_metadata(&*c, &name, &p).await }
            })
            .await
        {
            Ok(meta) => Ok(Some(meta)),
            Err(CallError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The current version of `path` (0 when absent).
    async fn current_version(&self, path: &str) -> Result<u64, StoreError> {
        let (mount, _) = self.route(path)?;
        if mount.kv == 1 {
            return match self.fetch(path, None).await {
                Ok(_) => Ok(1),
                Err(StoreError::NotFound) => Ok(0),
                Err(e) => Err(e),
            };
        }
        Ok(self.metadata(path).await?.map_or(0, |m| m.current_version))
    }

    /// Records that `version` is current (metadata, a latest read, a write).
    fn note_current(&self, path: &str, version: u64) {
        self.latest_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_string())
            .or_default()
            .current = Some(version);
        self.note_version(path, version);
    }

    /// Records that `version` exists, so the current one is at least that.
    fn note_version(&self, path: &str, version: u64) {
        let newer = {
            let mut known = self.latest_known.lock().unwrap_or_else(|p| p.into_inner());
            let entry = known.entry(path.to_string()).or_default();
            let newer = version > entry.newest;
            if newer {
                entry.newest = version;
            }
            newer
        };
        if newer {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .invalidate_older_latest(path, version);
            self.missing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove_path(path);
            let watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = watchers.get(path) {
                tx.send_if_modified(|v| {
                    let changed = *v < version;
                    if changed {
                        *v = version;
                    }
                    changed
                });
            }
        }
    }

    fn known_version(&self, path: &str) -> u64 {
        self.latest_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .map_or(0, |k| k.newest)
    }

    /// Whether `version` is confirmed current and nothing newer was seen.
    fn is_confirmed_current(&self, path: &str, version: u64) -> bool {
        self.latest_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .is_some_and(|k| k.current == Some(version) && k.newest <= version)
    }

    /// Fetches, caches and tells the bookkeeping what it learned.
    async fn fetch_and_cache(
        self: Arc<Self>,
        key: CacheKey,
    ) -> Result<StoredSecret, Arc<StoreError>> {
        let result = self.fetch(&key.0, key.1).await;
        if let Err(e @ (StoreError::NotFound | StoreError::VersionNotFound(_))) = &result {
            self.missing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), clone_error(e));
        }
        if let Ok(secret) = &result {
            let latest = key.1.is_none() || self.is_confirmed_current(&key.0, secret.version);
            {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert((key.0.clone(), Some(secret.version)), secret.clone());
                if latest {
                    cache.insert((key.0.clone(), None), secret.clone());
                }
            }
            if key.1.is_none() {
                self.note_current(&key.0, secret.version);
            } else {
                self.note_version(&key.0, secret.version);
            }
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        result.map_err(Arc::new)
    }

    fn stop_watching_if_unused(&self, path: &str) -> bool {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        match watchers.get(path) {
            Some(tx) if tx.receiver_count() > 0 => false,
            _ => {
                watchers.remove(path);
                true
            }
        }
    }
}

impl VaultStore {
    /// A read from the cache, the negative cache, a read already in flight,
    /// or Vault; only the last costs `tenant` a share of the budget.
    async fn read(
        &self,
        tenant: Option<&str>,
        path: &str,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        let inner = &self.inner;
        let key: CacheKey = (path.to_string(), version);
        if let Some(hit) = inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fresh(&key, inner.config.cache.ttl)
        {
            crate::metrics::store_cache("hit");
            return Ok(hit);
        }
        if let Some(missing) = inner
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Err(missing);
        }
        let joining = inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key);
        crate::metrics::store_cache(if joining { "coalesced" } else { "miss" });
        if let Some(tenant) = tenant.filter(|_| !joining) {
            inner.charge(tenant, path).await?;
        }
        let read = {
            let mut inflight = inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
            // A flight that ended since the cache was looked at above left
            // its value in the cache before leaving `inflight`: look again,
            // under the lock, rather than read Vault a second time.
            if !inflight.contains_key(&key)
                && let Some(hit) = inner
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fresh(&key, inner.config.cache.ttl)
            {
                return Ok(hit);
            }
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::clone(inner)
                        .fetch_and_cache(key.clone())
                        .boxed()
                        .shared()
                })
                .clone()
        };
        match read.await {
            Ok(secret) => Ok(secret),
            Err(error) => match &*error {
                StoreError::Unavailable(detail) => {
                    let stale = inner
                        .cache
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .stale(&key, inner.config.cache.max_staleness);
                    match stale {
                        Some(secret) => {
                            tracing::warn!(path, error = %detail, "Vault unavailable; serving a cached value");
                            Ok(secret)
                        }
                        None => Err(StoreError::Unavailable(detail.clone())),
                    }
                }
                other => Err(clone_error(other)),
            },
        }
    }
}

#[async_trait]
impl SecretStore for VaultStore {
    async fn get(&self, path: &str, version: Option<u64>) -> Result<StoredSecret, StoreError> {
        self.read(None, path, version).await
    }

    async fn get_for(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.read(Some(tenant), path, version).await
    }

    async fn get_held(
        &self,
        holder: &Holder,
        path: &str,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        match self.inner.leased_mount(path) {
            Some(mount) => self.inner.leased_get(holder, path, &mount, version).await,
            None => self.read(Some(&holder.tenant), path, version).await,
        }
    }

    fn shared(&self, path: &str) -> bool {
        self.inner.leased_mount(path).is_none()
    }

    fn lease_of(&self, holder: &Holder, path: &str, version: u64) -> Option<String> {
        let mount = self.inner.leased_mount(path)?;
        self.inner.leased_lease_of(holder, path, &mount, version)
    }

    fn leases(&self) -> Vec<LeaseInfo> {
        self.inner.leases.list()
    }

    fn lease_paths(&self, lease_id: &str) -> Vec<String> {
        self.inner
            .config
            .mounts
            .iter()
            .filter(|m| match m.engine {
                config::Engine::Database => {
                    lease_id.starts_with(&format!("{}/", leases::creds_path(m)))
                }
                config::Engine::Pki => lease_id.starts_with("pki:"),
                config::Engine::Kv => false,
            })
            .map(|m| m.prefix.trim_matches('/').to_string())
            .collect()
    }

    async fn revoke_lease(&self, lease_id: &str) -> Result<LeaseInfo, StoreError> {
        self.inner.revoke_lease(lease_id).await
    }

    fn lease_events(&self) -> Option<tokio::sync::mpsc::Receiver<LeaseEvent>> {
        self.inner.leases.take_events()
    }

    fn subscribe_held(&self, holder: &Holder, path: &str) -> watch::Receiver<u64> {
        match self.inner.leased_mount(path) {
            Some(mount) => self.inner.leased_subscribe(holder, path, &mount),
            None => self.subscribe(path),
        }
    }

    async fn put(&self, path: &str, write: SecretWrite) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let (mount, inner_path) = inner.route(path)?;
        let text = text_map(&write.data)?;
        let name = mount.mount.clone();
        let version = if mount.kv == 1 {
            if write.cas.is_some() {
                return Err(StoreError::Unsupported("check-and-set on a KV v1 mount"));
            }
            let map: HashMap<&str, &str> = text.iter().map(|(k, v)| (*k, *v)).collect();
            inner
                .call(|c| {
                    let (name, p, map) = (name.clone(), inner_path.clone(), &map);
                    async move { vaultrs::kv1::set(&*c, &name, &p, map).await }
                })
                .await?;
            1
        } else {
            let cas = match write.cas {
                Some(cas) => Some(u32::try_from(cas).map_err(|_| StoreError::CasMismatch {
                    current: inner.known_version(path),
                })?),
                None => None,
            };
            let result = inner
                .call(|c| {
                    let (name, p, text) = (name.clone(), inner_path.clone(), &text);
                    async move {
                        match cas {
                            Some(cas) => {
                                vaultrs::kv2::set_with_options(
                                    &*c,
                                    &name,
                                    &p,
                                    text,
                                    vaultrs::api::kv2::requests::SetSecretRequestOptions { cas },
                                )
                                .await
                            }
                            None => vaultrs::kv2::set(&*c, &name, &p, text).await,
                        }
                    }
                })
                .await;
            let version = match result {
                Ok(meta) => meta.version,
                Err(CallError::Other(400, _)) if cas.is_some() => {
                    let current = inner.metadata(path).await?.map_or(0, |m| m.current_version);
                    return Err(StoreError::CasMismatch { current });
                }
                Err(e) => return Err(e.into()),
            };
            // Labels given replace the secret's custom_metadata; a write
            // without labels keeps the stored ones (e.g. a rotation spec).
            if !write.labels.is_empty() {
                let labels: HashMap<String, String> = write.labels.clone().into_iter().collect();
                inner
                    .call(|c| {
                        let (name, p, labels) = (name.clone(), inner_path.clone(), labels.clone());
                        async move {
                            vaultrs::kv2::set_metadata(
                                &*c,
                                &name,
                                &p,
                                Some(
                                    vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder(
                                    )
                                    .custom_metadata(labels),
                                ),
                            )
                            .await
                        }
                    })
                    .await?;
            }
            version
        };
        inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_path(path);
        inner
            .missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_path(path);
        inner.note_current(path, version);
        Ok(version)
    }

    async fn versions(&self, path: &str) -> Result<(u64, Vec<VersionInfo>), StoreError> {
        let list = self.versions_with_labels(path).await?;
        Ok((list.current, list.versions))
    }

    async fn versions_with_labels(&self, path: &str) -> Result<VersionList, StoreError> {
        let (mount, _) = self.inner.route(path)?;
        if mount.kv == 1 {
            // KV v1 keeps neither versions nor labels.
            self.get(path, None).await?;
            return Ok(VersionList {
                current: 1,
                versions: vec![VersionInfo {
                    version: 1,
                    created_at: UNIX_EPOCH,
                    deleted: false,
                    destroyed: false,
                }],
                labels: BTreeMap::new(),
            });
        }
        let meta = self
            .inner
            .metadata(path)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut infos: Vec<VersionInfo> = meta
            .versions
            .iter()
            .filter_map(|(n, v)| {
                Some(VersionInfo {
                    version: n.parse().ok()?,
                    created_at: parse_time(&v.created_time),
                    deleted: !v.deletion_time.is_empty(),
                    destroyed: v.destroyed,
                })
            })
            .collect();
        infos.sort_by_key(|v| v.version);
        self.inner.note_current(path, meta.current_version);
        Ok(VersionList {
            current: meta.current_version,
            versions: infos,
            // KV v2 keeps labels per secret, as custom_metadata.
            labels: meta
                .custom_metadata
                .map(|m| m.into_iter().collect())
                .unwrap_or_default(),
        })
    }

    fn subscribe(&self, path: &str) -> watch::Receiver<u64> {
        let inner = &self.inner;
        let mut watchers = inner.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watchers.get(path) {
            return tx.subscribe();
        }
        // Unwatched KV v1 entries have no poller to remove them; KV v2
        // entries are left to their poller, so a path never gets two.
        watchers.retain(|p, tx| {
            tx.receiver_count() > 0 || inner.config.route(p).is_some_and(|(m, _)| m.kv == 2)
        });
        let (tx, rx) = watch::channel(inner.known_version(path));
        watchers.insert(path.to_string(), tx);
        drop(watchers);
        // KV v1 keeps no versions to poll: its changes are not detected.
        if inner.route(path).map_or(true, |(m, _)| m.kv != 2) {
            return rx;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let weak = Arc::downgrade(inner);
                let path = path.to_string();
                let token = inner.shutdown.clone();
                handle.spawn(async move { poll_loop(weak, path, token).await });
            }
            Err(_) => tracing::error!(
                path,
                "no async runtime: changes to this path are not watched"
            ),
        }
        rx
    }

    fn health(&self) -> Option<watch::Receiver<bool>> {
        Some(self.inner.health.subscribe())
    }

    async fn delete_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        self.change_versions(path, versions, VersionChange::Delete)
            .await
    }

    async fn undelete_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        self.change_versions(path, versions, VersionChange::Undelete)
            .await
    }

    async fn destroy_versions(&self, path: &str, versions: &[u64]) -> Result<(), StoreError> {
        self.change_versions(path, versions, VersionChange::Destroy)
            .await
    }

    async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        VaultStore::list(self, folder).await
    }

    async fn list_for(&self, tenant: &str, folder: &str) -> Result<Vec<String>, StoreError> {
        self.list_as(Some(tenant), folder).await
    }

    async fn refresh(&self, path: &str) -> Result<(), StoreError> {
        let version = self.inner.current_version(path).await?;
        // Deletions keep the version number: drop what is cached either way.
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_path(path);
        self.inner.note_version(path, version);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum VersionChange {
    Delete,
    Undelete,
    Destroy,
}

impl VaultStore {
    /// Deletes, undeletes or destroys KV v2 versions (empty: the current one).
    async fn change_versions(
        &self,
        path: &str,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let (mount, inner_path) = inner.route(path)?;
        if mount.kv != 2 {
            return Err(StoreError::Unsupported("versions on a KV v1 mount"));
        }
        let versions = if versions.is_empty() {
            let current = inner.metadata(path).await?.ok_or(StoreError::NotFound)?;
            vec![current.current_version]
        } else {
            versions.to_vec()
        };
        let name = mount.mount.clone();
        inner
            .call(|c| {
                let (name, p, versions) = (name.clone(), inner_path.clone(), versions.clone());
                async move {
                    match change {
                        VersionChange::Delete => {
                            vaultrs::kv2::delete_versions(&*c, &name, &p, versions).await
                        }
                        VersionChange::Undelete => {
                            vaultrs::kv2::undelete_versions(&*c, &name, &p, versions).await
                        }
                        VersionChange::Destroy => {
                            vaultrs::kv2::destroy_versions(&*c, &name, &p, versions).await
                        }
                    }
                }
            })
            .await?;
        inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_path(path);
        Ok(())
    }
}

/// The one poller of `path`: reads `current_version` until nobody watches.
async fn poll_loop(weak: Weak<Inner>, path: String, shutdown: CancellationToken) {
    let poller = crate::metrics::poller_started();
    loop {
        let interval = {
            let Some(inner) = weak.upgrade() else { return };
            if inner.stop_watching_if_unused(&path) {
                tracing::debug!(path, "no watchers left; polling stops");
                return;
            }
            match inner.current_version(&path).await {
                Ok(version) => {
                    poller.polled();
                    inner.note_current(&path, version);
                }
                Err(error) => tracing::debug!(path, %error, "polling Vault failed"),
            }
            jittered(inner.config.poll.interval, inner.config.poll.jitter)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Keeps health current when no requests flow: a cheap authenticated call
/// whenever nothing reached Vault for a poll interval.
async fn probe_loop(weak: Weak<Inner>, shutdown: CancellationToken) {
    loop {
        let interval = {
            let Some(inner) = weak.upgrade() else { return };
            let idle = inner
                .last_contact
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if idle >= inner.config.poll.interval {
                let _ = inner
                    .call(|c| async move { vaultrs::token::lookup_self(&*c).await.map(|_| ()) })
                    .await;
            }
            jittered(inner.config.poll.interval, inner.config.poll.jitter)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Moves a Vault KV map out of JSON into zeroizing buffers. Strings are
/// taken as they are; other JSON values keep their JSON text.
fn to_secret_data(value: serde_json::Value) -> Result<SecretData, StoreError> {
    let serde_json::Value::Object(map) = value else {
        return Err(StoreError::Internal(
            "Vault returned a non-map secret".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let bytes = match value {
            serde_json::Value::String(s) => s.into_bytes(),
            other => serde_json::to_vec(&other)
                .map_err(|_| StoreError::Internal("unencodable Vault value".into()))?,
        };
        out.insert(key, SecretBytes::new(bytes));
    }
    Ok(SecretData::Map(out))
}

/// Borrows a value as a map of texts for writing (Vault KV holds text).
fn text_map(data: &SecretData) -> Result<BTreeMap<&str, &str>, StoreError> {
    fn text(b: &SecretBytes) -> Result<&str, StoreError> {
        std::str::from_utf8(b.expose())
            .map_err(|_| StoreError::Unsupported("binary values in Vault KV (text only)"))
    }
    match data {
        SecretData::Bytes(b) => Ok(BTreeMap::from([(BYTES_KEY, text(b)?)])),
        SecretData::Map(m) => m.iter().map(|(k, v)| Ok((k.as_str(), text(v)?))).collect(),
    }
}

fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(text).unwrap_or(UNIX_EPOCH)
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::VersionNotFound(v) => StoreError::VersionNotFound(*v),
        StoreError::VersionDeleted(v) => StoreError::VersionDeleted(*v),
        StoreError::CasMismatch { current } => StoreError::CasMismatch { current: *current },
        StoreError::Unavailable(d) => StoreError::Unavailable(d.clone()),
        StoreError::Throttled => StoreError::Throttled,
        StoreError::Unsupported(w) => StoreError::Unsupported(w),
        StoreError::Internal(d) => StoreError::Internal(d.clone()),
    }
}

/// Recent "not found" answers, each kept for `ttl`, at most `max` of them.
struct NegativeCache {
    entries: HashMap<CacheKey, (Instant, StoreError)>,
    ttl: Duration,
    max: usize,
}

impl NegativeCache {
    fn new(ttl: Duration, max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            max,
        }
    }

    fn get(&mut self, key: &CacheKey) -> Option<StoreError> {
        let (at, error) = self.entries.get(key)?;
        if at.elapsed() < self.ttl {
            return Some(clone_error(error));
        }
        self.entries.remove(key);
        None
    }

    fn insert(&mut self, key: CacheKey, error: StoreError) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.max {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        // Still full of live entries: not remembering is only slower.
        if self.entries.len() < self.max {
            self.entries.insert(key, (Instant::now(), error));
        }
    }

    fn remove_path(&mut self, path: &str) {
        self.entries.retain(|(p, _), _| p != path);
    }
}

/// Cached secrets, bounded in bytes, least recently used evicted first.
struct Cache {
    entries: HashMap<CacheKey, Entry>,
    bytes: usize,
    max_bytes: usize,
    tick: u64,
}

struct Entry {
    secret: StoredSecret,
    fetched: Instant,
    used: u64,
    size: usize,
    /// A newer version exists: not fresh, but still good as a stale fallback.
    superseded: bool,
}

impl Cache {
    fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            max_bytes,
            tick: 0,
        }
    }

    fn touch(
        &mut self,
        key: &CacheKey,
        max_age: Duration,
        fresh_only: bool,
    ) -> Option<StoredSecret> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        if entry.fetched.elapsed() > max_age || (fresh_only && entry.superseded) {
            return None;
        }
        entry.used = tick;
        Some(entry.secret.clone())
    }

    fn fresh(&mut self, key: &CacheKey, ttl: Duration) -> Option<StoredSecret> {
        if ttl.is_zero() {
            return None;
        }
        self.touch(key, ttl, true)
    }

    fn stale(&mut self, key: &CacheKey, max_staleness: Duration) -> Option<StoredSecret> {
        self.touch(key, max_staleness, false)
    }

    fn insert(&mut self, key: CacheKey, secret: StoredSecret) {
        let size = secret.data.size() + key.0.len() + 64;
        self.remove(&key);
        if size > self.max_bytes {
            return;
        }
        while self.bytes + size > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                secret,
                fetched: Instant::now(),
                used: self.tick,
                size,
                superseded: false,
            },
        );
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.size;
        }
    }

    fn remove_path(&mut self, path: &str) {
        let keys: Vec<CacheKey> = self
            .entries
            .keys()
            .filter(|(p, _)| p == path)
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    fn invalidate_older_latest(&mut self, path: &str, version: u64) {
        if let Some(entry) = self.entries.get_mut(&(path.to_string(), None))
            && entry.secret.version < version
        {
            entry.superseded = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(version: u64, bytes: usize) -> StoredSecret {
        StoredSecret {
            version,
            data: SecretData::Bytes(SecretBytes::new(vec![b'x'; bytes])),
            content_type: String::new(),
            created_at: UNIX_EPOCH,
            ttl_hint: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_cache_stays_under_its_byte_bound_and_evicts_the_least_recently_used() {
        let mut cache = Cache::new(1000);
        cache.insert(("a".into(), None), secret(1, 300));
        cache.insert(("b".into(), None), secret(1, 300));
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
        cache.insert(("c".into(), None), secret(1, 300));
        assert!(cache.bytes <= 1000);
        assert!(
            cache
                .fresh(&("b".into(), None), Duration::from_secs(60))
                .is_none()
        );
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
        cache.insert(("huge".into(), None), secret(1, 5000));
        assert!(
            cache
                .fresh(&("huge".into(), None), Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn a_superseded_latest_is_stale_but_not_fresh() {
        let mut cache = Cache::new(10_000);
        cache.insert(("a".into(), None), secret(1, 10));
        cache.invalidate_older_latest("a", 2);
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_none()
        );
        assert!(
            cache
                .stale(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
    }

    #[test]
    fn json_values_become_zeroizing_bytes_and_writes_need_text() {
        let data = to_secret_data(serde_json::json!({"user": "u", "port": 5432})).unwrap();
        assert_eq!(data.key("user").unwrap().expose(), b"u");
        assert_eq!(data.key("port").unwrap().expose(), b"5432");
        assert!(to_secret_data(serde_json::json!("scalar")).is_err());
        let bytes = SecretData::Bytes(SecretBytes::new(vec![0xff, 0xfe]));
        assert!(matches!(text_map(&bytes), Err(StoreError::Unsupported(_))));
        let text = SecretData::Bytes(SecretBytes::new(b"hi".to_vec()));
        assert_eq!(text_map(&text).unwrap().get(BYTES_KEY), Some(&"hi"));
    }
}
