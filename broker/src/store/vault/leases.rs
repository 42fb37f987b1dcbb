//! Leased secrets: database credentials and PKI certificates issued per
//! workload (see docs/dynamic.md). A certificate has no Vault lease: it is
//! reissued at two thirds of its life and never revoked.
//!
//! Each (holder, path) pair owns one [`Held`] entry and one task. The first
//! read issues a credential (`<mount>/creds/<role>`) as version 1; the task
//! renews the lease at two thirds of its duration, and when Vault shortens
//! a renewal (the role's `max_ttl` is near) or refuses it, issues a fresh
//! credential as the next version, which the entry's watch channel pushes
//! to the holder's streams. When the holder has had no open watch for the
//! mount's `grace`, the lease is revoked and the entry removed. While Vault
//! cannot be reached the last credential is served until its lease ends.
//!
//! A broker restart loses the in-memory lease ids, so each replica records
//! the database leases it holds in the lease registry (a KV v2 secret per
//! replica, see [`super::config::LeaseRegistryConfig`]) before it serves
//! them. At start (`revokeOnStart`) a replica revokes the leases of its own
//! record, left by its previous run, before it issues any; every heartbeat
//! it revokes those of replicas whose record went stale (stopped, crashed,
//! or an old pod of a Deployment). Never a live replica's: a prefix
//! revocation of the role would end every replica's credentials.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use vaultrs::{client::VaultClient, error::ClientError};
use zeroize::Zeroizing;

use super::{
    CallError, Inner, MountConfig,
    config::{Engine, LeasePer},
    to_secret_data,
};
use crate::store::{
    Holder, LeaseAction, LeaseEvent, LeaseInfo, LeaseOwner, StoreError, StoredSecret,
};

/// The label carrying a leased credential's expiry (Unix seconds).
pub const LEASE_EXPIRES_LABEL: &str = "coffer.dev/lease-expires";

type Key = (String, String);

/// How many lease actions wait for the audit writer before more are
/// dropped (and logged).
const EVENT_QUEUE: usize = 1024;

/// How many (version, lease id) pairs an entry remembers, so the audit
/// record of a read finds its lease even if a rotation just happened.
const SERVED_KEPT: usize = 4;

/// How long an issue waits for the start sweep before it fails
/// (`UNAVAILABLE`): no credential is issued before this replica's
/// leftovers are revoked.
const START_SWEEP_WAIT: Duration = Duration::from_secs(10);

/// The live leases, by holder key and broker path.
pub(super) struct Leases {
    entries: Mutex<HashMap<Key, Arc<Held>>>,
    /// This replica's record in the lease registry.
    registry: Registry,
    /// The broker's own lease actions, for the audit trail.
    events: mpsc::Sender<LeaseEvent>,
    events_out: Mutex<Option<mpsc::Receiver<LeaseEvent>>>,
    /// Whether anyone took the receiver (without an audit trail, nothing
    /// is queued).
    events_taken: AtomicBool,
}

impl Default for Leases {
    fn default() -> Self {
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        Self {
            entries: Mutex::default(),
            registry: Registry::default(),
            events,
            events_out: Mutex::new(Some(rx)),
            events_taken: AtomicBool::new(false),
        }
    }
}

struct Held {
    key: Key,
    holder: Holder,
    mount: MountConfig,
    version: watch::Sender<u64>,
    state: tokio::sync::Mutex<Option<Credential>>,
    issued: Notify,
    /// Set under the entries lock when the entry leaves the table.
    retired: AtomicBool,
    /// The last versions issued and their lease ids, newest last.
    served: Mutex<VecDeque<(u64, String)>>,
    /// What `ListLeases` shows of the credential, kept apart from `state`
    /// so a listing never waits for a renewal in flight.
    view: Mutex<Option<LeaseInfo>>,
}

impl Held {
    /// The version the next credential gets.
    fn next_version(&self) -> u64 {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .back()
            .map_or(1, |(v, _)| v + 1)
    }

    fn remember(&self, version: u64, lease_id: &str) {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if served.len() == SERVED_KEPT {
            served.pop_front();
        }
        served.push_back((version, lease_id.to_string()));
    }

    /// Updates what listings show after `state` changed.
    fn publish(&self, credential: Option<&Credential>) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = credential.map(|c| info(self, c));
    }

    /// What listings show, if a credential is held.
    fn view(&self) -> Option<LeaseInfo> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

struct Credential {
    secret: StoredSecret,
    lease_id: String,
    /// The duration Vault granted at issue (the role's TTL).
    lease: Duration,
    renew_at: Instant,
    expires_at: Instant,
    expires_wall: SystemTime,
    issued_wall: SystemTime,
    renewable: bool,
    /// Since when renewals fail, and how (a fixed word, never Vault's text).
    failing: Option<(SystemTime, &'static str)>,
}

/// What this replica has told the lease registry, and what it holds.
struct Registry {
    /// The database leases this replica holds (or left to end at their
    /// expiry after a rotation), with their expiry.
    owned: Mutex<BTreeMap<String, SystemTime>>,
    /// One record write at a time, each with the newest set.
    writing: tokio::sync::Mutex<()>,
    /// Set once this replica's leftovers are revoked.
    started: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            owned: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
            started: watch::Sender::new(false),
        }
    }
}

impl Registry {
    fn own(&self, lease_id: &str, expires: SystemTime) {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(lease_id.to_string(), expires);
    }

    fn disown(&self, lease_id: &str) {
        self.owned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lease_id);
    }

    /// The leases held now; those past their expiry are forgotten.
    fn snapshot(&self) -> Vec<String> {
        let now = SystemTime::now();
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.retain(|_, expires| *expires > now);
        owned.keys().cloned().collect()
    }
}

/// What Vault answers when issuing or renewing.
struct Grant {
    lease_id: String,
    lease: Duration,
    renewable: bool,
    data: Option<serde_json::Value>,
}

impl Leases {
    /// The receiver of the broker's own lease actions, once.
    pub(super) fn take_events(&self) -> Option<mpsc::Receiver<LeaseEvent>> {
        let rx = self
            .events_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if rx.is_some() {
            self.events_taken.store(true, Ordering::Release);
        }
        rx
    }

    /// The lease that served `version` on `key`'s entry.
    fn lease_of(&self, key: &Key, version: u64) -> Option<String> {
        let held = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()?;
        let served = held.served.lock().unwrap_or_else(|p| p.into_inner());
        served
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, id)| id.clone())
    }

    /// The entry whose current lease is `lease_id`.
    fn find(&self, lease_id: &str) -> Option<Arc<Held>> {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|h| h.view().is_some_and(|v| v.lease_id == lease_id))
            .cloned()
    }

    /// Every live lease, without credentials.
    pub(super) fn list(&self) -> Vec<LeaseInfo> {
        let held: Vec<Arc<Held>> = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        held.iter().filter_map(|h| h.view()).collect()
    }
}

fn info(held: &Held, c: &Credential) -> LeaseInfo {
    LeaseInfo {
        holder: held.key.0.clone(),
        owner: LeaseOwner::from(&held.holder),
        path: held.key.1.clone(),
        lease_id: c.lease_id.clone(),
        version: c.secret.version,
        issued_at: c.issued_wall,
        expires_at: c.expires_wall,
        failing: c.failing,
    }
}

/// The `coffer_leases` state of a credential: `Some(failing)`.
fn gauge_state(c: Option<&Credential>) -> Option<bool> {
    c.map(|c| c.failing.is_some())
}

/// The kind of a failed issue or renewal: a fixed word for status and
/// metrics, never Vault's text.
fn failure_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Throttled => "throttled",
        StoreError::NotFound => "refused",
        _ => "error",
    }
}

/// The holder key for `mount`: per pod unless the mount says otherwise.
fn holder_key(holder: &Holder, mount: &MountConfig) -> String {
    match (mount.lease_per, &holder.pod) {
        (LeasePer::Pod, Some(pod)) => format!("{}/pod/{pod}", holder.tenant),
        _ => holder.tenant.clone(),
    }
}

impl Inner {
    /// The entry of `holder` on `path`, created (with its task) if new.
    fn held(self: &Arc<Self>, holder: &Holder, path: &str, mount: &MountConfig) -> Arc<Held> {
        let key = (holder_key(holder, mount), path.to_string());
        let mut entries = self
            .leases
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(held) = entries.get(&key) {
            return Arc::clone(held);
        }
        let held = Arc::new(Held {
            key: key.clone(),
            holder: holder.clone(),
            mount: mount.clone(),
            version: watch::Sender::new(0),
            state: tokio::sync::Mutex::new(None),
            issued: Notify::new(),
            retired: AtomicBool::new(false),
            served: Mutex::new(VecDeque::new()),
            view: Mutex::new(None),
        });
        entries.insert(key, Arc::clone(&held));
        let (weak, task) = (Arc::downgrade(self), Arc::clone(&held));
        tokio::spawn(manage(weak, task));
        held
    }

    /// The version channel of `holder`'s credential on `path`.
    pub(super) fn leased_subscribe(
        self: &Arc<Self>,
        holder: &Holder,
        path: &str,
        mount: &MountConfig,
    ) -> watch::Receiver<u64> {
        self.held(holder, path, mount).version.subscribe()
    }

    /// `holder`'s credential on `path`, issued on first use.
    pub(super) async fn leased_get(
        self: &Arc<Self>,
        holder: &Holder,
        path: &str,
        mount: &MountConfig,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        loop {
            let held = self.held(holder, path, mount);
            let mut state = held.state.lock().await;
            if held.retired.load(Ordering::Acquire) {
                // Revoked between the lookup and now: start a new entry.
                continue;
            }
            if state.is_none() {
                let next = held.next_version();
                let credential = self.issue(&held.mount, &held.holder, next).await?;
                held.remember(next, &credential.lease_id);
                let reason = if next == 1 { "first_read" } else { "reissued" };
                self.emit(
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

    /// Waits until this replica's leftovers are revoked (the start
    /// sweep), so no credential it issues now is mistaken for one.
    async fn wait_for_start_sweep(&self) -> Result<(), StoreError> {
        let mut started = self.leases.registry.started.subscribe();
        match tokio::time::timeout(START_SWEEP_WAIT, started.wait_for(|done| *done)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "the leases an earlier run left are not revoked yet".into(),
            )),
        }
    }

    /// Whether `lease_id` is one this broker may revoke as a leftover: a
    /// credential of a database mount with `revokeOnStart`. A record naming
    /// anything else (it should not) is not acted on.
    fn revocable(&self, lease_id: &str) -> bool {
        self.config.mounts.iter().any(|m| {
            m.engine == Engine::Database
                && m.revoke_on_start
                && lease_id
                    .strip_prefix(&creds_path(m))
                    .is_some_and(|rest| rest.starts_with('/') && !rest.contains(".."))
        })
    }

    /// `<mount>/data/<path>/<replica>` or `<mount>/metadata/...`.
    fn registry_path(&self, kind: &str, replica: &str) -> Option<String> {
        let (mount, path) = self.config.registry_location()?;
        Some(format!("{mount}/{kind}/{path}/{replica}"))
    }

    /// Writes this replica's record (the heartbeat); Vault's time of the
    /// write.
    async fn write_registry(&self) -> Result<SystemTime, StoreError> {
        let Some(path) = self.registry_path("data", &self.config.replica_id) else {
            return Err(StoreError::Internal("no lease registry".into()));
        };
        let _one = self.leases.registry.writing.lock().await;
        let body = serde_json::json!({"data": {
            "replica": self.config.replica_id,
            "leases": self.leases.registry.snapshot(),
        }});
        let answer = self
            .call(|c| {
                let (path, body) = (path.clone(), body.clone());
                async move { raw(&c, http::Method::PUT, &path, Some(body)).await }
            })
            .await?;
        let value: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| StoreError::Internal("Vault's registry answer is not JSON".into()))?;
        value["data"]["created_time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .ok_or_else(|| StoreError::Internal("Vault's registry answer has no time".into()))
    }

    /// Records the leases held now; a failure is logged (the next
    /// heartbeat tries again).
    async fn record_leases(&self) {
        if !self.config.revokes_on_start() {
            return;
        }
        if let Err(error) = self.write_registry().await {
            tracing::warn!(%error, "could not record this replica's leases in the lease registry");
        }
    }

    /// A replica's record: its leases and the time of its last heartbeat.
    async fn read_registry(
        &self,
        replica: &str,
    ) -> Result<Option<(Vec<String>, SystemTime)>, StoreError> {
        let Some(path) = self.registry_path("data", replica) else {
            return Ok(None);
        };
        let answer = match self
            .call(|c| {
                let path = path.clone();
                async move { raw(&c, http::Method::GET, &path, None).await }
            })
            .await
        {
            Ok(answer) => answer,
            Err(CallError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let value: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| StoreError::Internal("Vault's registry answer is not JSON".into()))?;
        let data = &value["data"];
        let leases = data["data"]["leases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
        let at = data["metadata"]["created_time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .unwrap_or(UNIX_EPOCH);
        Ok(Some((leases, at)))
    }

    /// The replicas with a record.
    async fn registry_replicas(&self) -> Result<Vec<String>, StoreError> {
        let Some(path) = self.registry_path("metadata", "") else {
            return Ok(Vec::new());
        };
        let path = format!("{}?list=true", path.trim_end_matches('/'));
        let answer = match self
            .call(|c| {
                let path = path.clone();
                async move { raw(&c, http::Method::GET, &path, None).await }
            })
            .await
        {
            Ok(answer) => answer,
            Err(CallError::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let value: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|_| StoreError::Internal("Vault's registry listing is not JSON".into()))?;
        Ok(value["data"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .filter(|k| super::config::valid_replica_id(k))
            .map(str::to_string)
            .collect())
    }

    /// Revokes the leases `replica` left and removes its record.
    async fn revoke_leftovers(&self, replica: &str, leases: &[String]) -> Result<(), StoreError> {
        let mut revoked = 0;
        for lease_id in leases.iter().filter(|l| self.revocable(l)) {
            // One that cannot be revoked ends at its TTL; the rest go on.
            if self.revoke(lease_id).await.is_ok() {
                revoked += 1;
            }
        }
        tracing::info!(
            replica,
            revoked,
            "revoked the leases a stopped broker replica left"
        );
        if let Some(path) = self.registry_path("metadata", replica) {
            let result = self
                .call(|c| {
                    let path = path.clone();
                    async move { raw(&c, http::Method::DELETE, &path, None).await.map(drop) }
                })
                .await;
            match result {
                Ok(()) | Err(CallError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// At start: revokes this replica's own leftovers, then writes its
    /// first heartbeat.
    async fn start_sweep(&self) -> Result<(), StoreError> {
        let own = self.config.replica_id.clone();
        let left = self.read_registry(&own).await?;
        if let Some((leases, _)) = left {
            self.revoke_leftovers(&own, &leases).await?;
        }
        self.write_registry().await?;
        Ok(())
    }

    /// Revokes the leases of replicas whose heartbeat is older than
    /// `expireAfter` at `now` (Vault's time of this replica's heartbeat).
    async fn sweep_stale(&self, now: SystemTime) -> Result<(), StoreError> {
        let expire_after = self.config.lease_registry.expire_after;
        for replica in self.registry_replicas().await? {
            if replica == self.config.replica_id {
                continue;
            }
            let Some((leases, at)) = self.read_registry(&replica).await? else {
                continue;
            };
            if now.duration_since(at).unwrap_or_default() > expire_after {
                tracing::info!(
                    replica,
                    "a broker replica stopped heartbeating; revoking its leases"
                );
                self.revoke_leftovers(&replica, &leases).await?;
            }
        }
        Ok(())
    }

    /// A new credential (or certificate) for `holder` from Vault, as `version`.
    async fn issue(
        &self,
        mount: &MountConfig,
        holder: &Holder,
        version: u64,
    ) -> Result<Credential, StoreError> {
        let (path, grant) = if mount.engine == Engine::Pki {
            let path = issue_path(mount);
            let body = pki_request(mount, holder)?;
            let answer = self
                .call(|c| {
                    let (path, body) = (path.clone(), body.clone());
                    async move { raw(&c, http::Method::PUT, &path, Some(body)).await }
                })
                .await?;
            (path, parse_certificate(&answer)?)
        } else {
            if mount.revoke_on_start {
                self.wait_for_start_sweep().await?;
            }
            let path = creds_path(mount);
            let answer = self
                .call(|c| {
                    let path = path.clone();
                    async move { raw(&c, http::Method::GET, &path, None).await }
                })
                .await?;
            (path, parse_grant(&answer)?)
        };
        let expires_wall = SystemTime::now() + grant.lease;
        if mount.engine == Engine::Database && mount.revoke_on_start {
            // Recorded before it is served: a crash from here on leaves a
            // lease the next start finds.
            self.leases.registry.own(&grant.lease_id, expires_wall);
            self.record_leases().await;
        }
        let data = to_secret_data(grant.data.unwrap_or(serde_json::Value::Null))?;
        let now = Instant::now();
        let expires_unix = unix_seconds(expires_wall);
        tracing::info!(path = %path, lease_id = %grant.lease_id, version, ttl_s = grant.lease.as_secs(), "issued a leased credential");
        Ok(Credential {
            secret: StoredSecret {
                version,
                data,
                content_type: String::new(),
                created_at: SystemTime::now(),
                ttl_hint: Some(grant.lease),
                labels: BTreeMap::from([(
                    LEASE_EXPIRES_LABEL.to_string(),
                    expires_unix.to_string(),
                )]),
            },
            lease_id: grant.lease_id,
            lease: grant.lease,
            renew_at: now + grant.lease * 2 / 3,
            expires_at: now + grant.lease,
            expires_wall,
            issued_wall: SystemTime::now(),
            renewable: grant.renewable,
            failing: None,
        })
    }

    /// Renews `lease_id` by `increment`; the duration Vault granted.
    async fn renew(&self, lease_id: &str, increment: Duration) -> Result<Duration, CallError> {
        let body = serde_json::json!({"lease_id": lease_id, "increment": increment.as_secs()});
        let answer = self
            .call(|c| {
                let body = body.clone();
                async move { raw(&c, http::Method::PUT, "sys/leases/renew", Some(body)).await }
            })
            .await?;
        parse_grant(&answer)
            .map(|g| g.lease)
            .map_err(|e| CallError::Other(0, e.to_string()))
    }

    /// Revokes `lease_id`; failures are logged (the lease then ends at its
    /// expiry, or at the next start's sweep).
    async fn revoke(&self, lease_id: &str) -> Result<(), StoreError> {
        let body = serde_json::json!({"lease_id": lease_id});
        let result = self
            .call(|c| {
                let body = body.clone();
                async move {
                    raw(&c, http::Method::PUT, "sys/leases/revoke", Some(body))
                        .await
                        .map(drop)
                }
            })
            .await;
        match result {
            Ok(()) => {
                tracing::info!(lease_id = %lease_id, "revoked a lease");
                self.leases.registry.disown(lease_id);
                Ok(())
            }
            Err(e) => {
                let error = StoreError::from(e);
                tracing::warn!(lease_id = %lease_id, error = %error, "could not revoke a lease");
                Err(error)
            }
        }
    }

    /// Queues one of the broker's own lease actions for the audit trail;
    /// dropped (and logged) when the queue is full.
    fn emit(
        &self,
        held: &Held,
        action: LeaseAction,
        lease_id: &str,
        version: u64,
        reason: &'static str,
    ) {
        if !self.leases.events_taken.load(Ordering::Acquire) {
            return;
        }
        let event = LeaseEvent {
            action,
            lease_id: lease_id.to_string(),
            path: held.key.1.clone(),
            version,
            owner: LeaseOwner::from(&held.holder),
            reason,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.leases.events.try_send(event) {
            tracing::warn!(lease_id = %lease_id, action = action.as_str(), "lease action not audited: the queue is full");
        }
    }

    /// The lease `holder` was served `version` of `path` under.
    pub(super) fn leased_lease_of(
        &self,
        holder: &Holder,
        path: &str,
        mount: &MountConfig,
        version: u64,
    ) -> Option<String> {
        let key = (holder_key(holder, mount), path.to_string());
        self.leases.lease_of(&key, version)
    }

    /// Revokes `lease_id` in Vault now (a certificate, which has no Vault
    /// lease, is only forgotten) and gives its holder's watches a new
    /// credential as the next version.
    pub(super) async fn revoke_lease(&self, lease_id: &str) -> Result<LeaseInfo, StoreError> {
        let held = self.leases.find(lease_id).ok_or(StoreError::NotFound)?;
        let mut state = held.state.lock().await;
        let Some(current) = state.as_ref().filter(|c| c.lease_id == lease_id) else {
            // Rotated or revoked meanwhile: that lease is gone already.
            return Err(StoreError::NotFound);
        };
        let revoked = info(&held, current);
        if held.mount.engine == Engine::Database {
            self.revoke(lease_id).await?;
        }
        let old = state.take();
        held.publish(None);
        crate::metrics::lease_state(gauge_state(old.as_ref()), None);
        self.emit(
            &held,
            LeaseAction::Revoke,
            lease_id,
            revoked.version,
            "operator",
        );
        if held.version.receiver_count() > 0 {
            let next = held.next_version();
            match self.issue(&held.mount, &held.holder, next).await {
                Ok(fresh) => {
                    held.remember(next, &fresh.lease_id);
                    self.emit(&held, LeaseAction::Issue, &fresh.lease_id, next, "revoked");
                    *state = Some(fresh);
                    held.publish(state.as_ref());
                    crate::metrics::lease_state(None, Some(false));
                    held.issued.notify_one();
                }
                Err(error) => {
                    // The watches ask for the next version, which is
                    // issued on that read once Vault answers again.
                    tracing::warn!(path = %held.key.1, error = %error, "could not issue a credential after a revocation");
                }
            }
            held.version.send_replace(next);
        }
        Ok(revoked)
    }

    /// Removes `held` from the table if nobody watches it; true if removed.
    fn retire_if_unused(&self, held: &Arc<Held>) -> bool {
        let mut entries = self
            .leases
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if held.version.receiver_count() > 0 {
            return false;
        }
        held.retired.store(true, Ordering::Release);
        if entries.get(&held.key).is_some_and(|h| Arc::ptr_eq(h, held)) {
            entries.remove(&held.key);
        }
        true
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `<mount>/creds/<role>`.
pub(super) fn creds_path(mount: &MountConfig) -> String {
    format!(
        "{}/creds/{}",
        mount.mount.trim_matches('/'),
        mount.role.as_deref().unwrap_or("")
    )
}

/// The lease registry's life: the start sweep, retried until it succeeds
/// (issues wait for it), then a heartbeat every `heartbeat`. Replicas whose
/// heartbeat went stale are swept only once this replica has itself reached
/// Vault for `expireAfter` without a miss: after an outage every live
/// replica gets the time to heartbeat again before anyone judges it gone.
pub(super) async fn registry_loop(weak: Weak<Inner>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        match inner.start_sweep().await {
            Ok(()) => {
                inner.leases.registry.started.send_replace(true);
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "could not revoke the leases this replica left; retrying")
            }
        }
        drop(inner);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    let mut healthy_since: Option<SystemTime> = None;
    loop {
        let Some(registry) = weak.upgrade().map(|i| i.config.lease_registry.clone()) else {
            return;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(registry.heartbeat) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        match inner.write_registry().await {
            Ok(now) => {
                let since = *healthy_since.get_or_insert(now);
                if now.duration_since(since).unwrap_or_default() >= registry.expire_after
                    && let Err(error) = inner.sweep_stale(now).await
                {
                    tracing::warn!(%error, "could not sweep the leases of stopped replicas");
                }
            }
            Err(error) => {
                healthy_since = None;
                tracing::warn!(%error, "lease registry heartbeat failed");
            }
        }
    }
}

/// One entry's life: renew, rotate, and revoke when unwatched.
async fn manage(weak: Weak<Inner>, held: Arc<Held>) {
    let shutdown = match weak.upgrade() {
        Some(inner) => inner.shutdown.clone(),
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
                let Some(inner) = weak.upgrade() else { return };
                if inner.retire_if_unused(&held) {
                    let taken = held.state.lock().await.take();
                    held.publish(None);
                    crate::metrics::lease_state(gauge_state(taken.as_ref()), None);
                    if let Some(c) = taken
                        && held.mount.engine == Engine::Database
                    {
                        let reason = match inner.revoke(&c.lease_id).await {
                            Ok(()) => "holder_gone",
                            Err(_) => "holder_gone_revoke_failed",
                        };
                        inner.emit(&held, LeaseAction::Revoke, &c.lease_id, c.secret.version, reason);
                    }
                    return;
                }
                idle_since = None;
            }
            () = tokio::time::sleep_until(renew_at.unwrap_or(far).into()), if renew_at.is_some() => {
                let Some(inner) = weak.upgrade() else { return };
                renew_or_rotate(&inner, &held).await;
            }
        }
    }
}

/// At the renewal time: renew, or issue the next version when Vault
/// shortened the lease (its `max_ttl` is near) or the lease is gone.
async fn renew_or_rotate(inner: &Inner, held: &Held) {
    let mut state = held.state.lock().await;
    let Some(current) = state.as_mut() else {
        return;
    };
    renew_or_rotate_held(inner, held, current).await;
    held.publish(state.as_ref());
}

async fn renew_or_rotate_held(inner: &Inner, held: &Held, current: &mut Credential) {
    let path = &held.key.1;
    let renewed = if current.renewable {
        inner.renew(&current.lease_id, current.lease).await
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
                inner.emit(
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
    match inner.issue(&held.mount, &held.holder, next).await {
        Ok(fresh) => {
            // The old lease ends by itself at max_ttl, so an application
            // still using it has until then to pick up the new file.
            tracing::info!(path = %path, old_lease_id = %current.lease_id, version = next, "rotated a leased credential");
            held.remember(next, &fresh.lease_id);
            inner.emit(held, LeaseAction::Issue, &fresh.lease_id, next, reason);
            *current = fresh;
            crate::metrics::lease_state(before, Some(false));
            held.version.send_replace(next);
        }
        Err(error) => {
            let left = current.expires_at.saturating_duration_since(now);
            current.renew_at = now + (left / 3).max(Duration::from_millis(500));
            let kind = failure_kind(&error);
            if current.failing.is_none() {
                inner.emit(
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

/// One request to Vault's HTTP API, for endpoints vaultrs does not model
/// with their lease fields. The body is zeroized when dropped.
async fn raw(
    client: &VaultClient,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let settings = &client.settings;
    let url = format!(
        "{}/v1/{path}",
        settings.address.as_str().trim_end_matches('/')
    );
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("X-Vault-Token", settings.token.as_str());
    if let Some(namespace) = &settings.namespace {
        request = request.header("X-Vault-Namespace", namespace.as_str());
    }
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let request = request.body(bytes).map_err(|e| ClientError::APIError {
        code: 0,
        errors: vec![e.to_string()],
    })?;
    let response = rustify::client::Client::execute(&client.http, request)
        .await
        .map_err(|source| ClientError::RestClientError { source })?;
    Ok(Zeroizing::new(response.into_body()))
}

/// `<mount>/issue/<role>`.
fn issue_path(mount: &MountConfig) -> String {
    format!(
        "{}/issue/{}",
        mount.mount.trim_matches('/'),
        mount.role.as_deref().unwrap_or("")
    )
}

/// The issue request: the identity comes from the verified token (the
/// holder) and the names from the config, never from the caller's request.
fn pki_request(mount: &MountConfig, holder: &Holder) -> Result<serde_json::Value, StoreError> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    };
    if !name_ok(&holder.namespace) || !name_ok(&holder.service_account) {
        return Err(StoreError::Internal(
            "the caller's namespace or service account is not a DNS name".into(),
        ));
    }
    // The trust domain is the caller's issuer's: two clusters' `shop/web`
    // are two identities. An issuer without one gets nothing (fail closed).
    let Some(trust_domain) = mount.trust_domains.get(&holder.issuer) else {
        return Err(StoreError::Internal(
            "no trust domain is configured for the caller's issuer".into(),
        ));
    };
    let spiffe = format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        holder.namespace, holder.service_account
    );
    let mut body = serde_json::json!({
        "uri_sans": spiffe,
        "exclude_cn_from_sans": false,
        "format": "pem",
    });
    if let Some(first) = mount.dns_names.first() {
        body["common_name"] = first.clone().into();
        body["alt_names"] = mount.dns_names.join(",").into();
    }
    if let Some(ttl) = mount.ttl {
        body["ttl"] = format!("{}s", ttl.as_secs()).into();
    }
    Ok(body)
}

/// A PKI answer as a credential: `tls.crt`, `tls.key`, `ca.crt`, lasting
/// until the certificate's expiry; its serial stands for the lease id.
fn parse_certificate(body: &[u8]) -> Result<Grant, StoreError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| StoreError::Internal("Vault's certificate answer is not JSON".into()))?;
    let data = &mut value["data"];
    let serial = data["serial_number"].as_str().unwrap_or("").to_string();
    let expiration = data["expiration"].as_u64().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if serial.is_empty() || expiration <= now {
        return Err(StoreError::Internal(
            "Vault's certificate answer has no serial or expiry".into(),
        ));
    }
    let files = serde_json::json!({
        "tls.crt": data["certificate"].take(),
        "tls.key": data["private_key"].take(),
        "ca.crt": data["issuing_ca"].take(),
    });
    Ok(Grant {
        lease_id: format!("pki:{serial}"),
        lease: Duration::from_secs(expiration - now),
        renewable: false,
        data: Some(files),
    })
}

/// The lease fields (and data) of a Vault answer.
fn parse_grant(body: &[u8]) -> Result<Grant, StoreError> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| StoreError::Internal("Vault's lease answer is not JSON".into()))?;
    let lease_id = value["lease_id"].as_str().unwrap_or("").to_string();
    if lease_id.is_empty() {
        return Err(StoreError::Internal("Vault's answer has no lease".into()));
    }
    Ok(Grant {
        lease: Duration::from_secs(value["lease_duration"].as_u64().unwrap_or(0)),
        renewable: value["renewable"].as_bool().unwrap_or(false),
        data: value.get_mut("data").map(serde_json::Value::take),
        lease_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_parsed_without_keeping_the_body() {
        let body = br#"{"lease_id":"database/creds/shop/abc","lease_duration":60,"renewable":true,"data":{"username":"u","password":"p"}}"#;
        let grant = parse_grant(body).unwrap();
        assert_eq!(grant.lease_id, "database/creds/shop/abc");
        assert_eq!(grant.lease, Duration::from_secs(60));
        assert!(grant.renewable);
        assert!(grant.data.is_some());
        assert!(parse_grant(br#"{"lease_id":"","data":{}}"#).is_err());
        assert!(parse_grant(b"not json").is_err());
    }

    #[test]
    fn holders_are_per_pod_unless_per_service_account() {
        let mut mount = MountConfig {
            prefix: "db/shop".into(),
            mount: "database".into(),
            kv: 2,
            path: None,
            engine: super::super::config::Engine::Database,
            role: Some("shop".into()),
            lease_per: LeasePer::Pod,
            grace: Duration::from_secs(1),
            revoke_on_start: true,
            trust_domain: None,
            trust_domains: BTreeMap::new(),
            dns_names: Vec::new(),
            ttl: None,
        };
        let pod = Holder {
            tenant: "iss/shop/web".into(),
            pod: Some("uid-1".into()),
            namespace: "shop".into(),
            service_account: "web".into(),
            issuer: "iss".into(),
            pod_name: None,
            pod_uid: None,
        };
        let no_pod = Holder {
            pod: None,
            ..pod.clone()
        };
        assert_eq!(holder_key(&pod, &mount), "iss/shop/web/pod/uid-1");
        assert_eq!(holder_key(&no_pod, &mount), "iss/shop/web");
        mount.lease_per = LeasePer::ServiceAccount;
        assert_eq!(holder_key(&pod, &mount), "iss/shop/web");
        assert_eq!(creds_path(&mount), "database/creds/shop");
    }

    #[test]
    fn a_certificate_request_names_the_token_identity_and_the_configured_dns_names() {
        let mut mount = MountConfig {
            prefix: "shop/tls".into(),
            mount: "pki".into(),
            kv: 2,
            path: None,
            engine: Engine::Pki,
            role: Some("web".into()),
            lease_per: LeasePer::Pod,
            grace: Duration::from_secs(1),
            revoke_on_start: true,
            trust_domain: None,
            trust_domains: BTreeMap::from([
                ("iss".to_string(), "cluster.local".to_string()),
                ("other".to_string(), "other.example".to_string()),
            ]),
            dns_names: vec!["web.shop.svc".into(), "web".into()],
            ttl: Some(Duration::from_secs(60)),
        };
        let holder = Holder {
            tenant: "iss shop/web".into(),
            pod: None,
            namespace: "shop".into(),
            service_account: "web".into(),
            issuer: "iss".into(),
            pod_name: None,
            pod_uid: None,
        };
        let body = pki_request(&mount, &holder).unwrap();
        assert_eq!(body["uri_sans"], "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(body["common_name"], "web.shop.svc");
        assert_eq!(body["alt_names"], "web.shop.svc,web");
        assert_eq!(body["ttl"], "60s");
        assert_eq!(issue_path(&mount), "pki/issue/web");
        mount.dns_names.clear();
        assert!(
            pki_request(&mount, &holder)
                .unwrap()
                .get("common_name")
                .is_none()
        );
        let other = Holder {
            issuer: "other".into(),
            ..holder.clone()
        };
        assert_eq!(
            pki_request(&mount, &other).unwrap()["uri_sans"],
            "spiffe://other.example/ns/shop/sa/web",
            "the trust domain follows the issuer"
        );
        let unknown = Holder {
            issuer: "unknown".into(),
            ..holder.clone()
        };
        assert!(pki_request(&mount, &unknown).is_err());
        let odd = Holder {
            service_account: "web/../x".into(),
            ..holder
        };
        assert!(pki_request(&mount, &odd).is_err());
    }
}
