//! The lease registry: what this replica has told Vault it holds, so that
//! a restart can revoke what the last run left, and a replica can revoke
//! the leases of one that stopped heartbeating.
//!
//! A broker restart loses the in-memory lease ids, so each replica records
//! the database leases it holds in the lease registry (a KV v2 secret per
//! replica, see `LeaseRegistryConfig`) before it serves them. At start
//! (`revokeOnStart`) a replica revokes the leases of its own record, left
//! by its previous run, before it issues any; every heartbeat it revokes
//! those of replicas whose record went stale (stopped, crashed, or an old
//! pod of a Deployment). Never a live replica's: a prefix revocation of the
//! role would end every replica's credentials.

use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use coffer_runtime::Backoff;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    super::{
        backend::{Backend, CallError},
        config::{Engine, valid_replica_id},
    },
    grant::{self, creds_path, raw},
};
use crate::store::StoreError;

/// How long an issue waits for the start sweep before it fails
/// (`UNAVAILABLE`): no credential is issued before this replica's
/// leftovers are revoked.
const START_SWEEP_WAIT: Duration = Duration::from_secs(10);

/// What this replica has told the lease registry, and what it holds.
pub(super) struct Registry {
    vault: Arc<Backend>,
    /// The database leases this replica holds (or left to end at their
    /// expiry after a rotation), with their expiry.
    owned: Mutex<BTreeMap<String, SystemTime>>,
    /// One record write at a time, each with the newest set.
    writing: tokio::sync::Mutex<()>,
    /// Set once this replica's leftovers are revoked.
    started: watch::Sender<bool>,
}

impl Registry {
    pub(super) fn new(vault: Arc<Backend>) -> Self {
        Self {
            vault,
            owned: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
            started: watch::Sender::new(false),
        }
    }

    /// Records that this replica holds `lease_id` until `expires`.
    pub(super) fn own(&self, lease_id: &str, expires: SystemTime) {
        self.owned.lock().insert(lease_id.to_string(), expires);
    }

    /// The leases held now; those past their expiry are forgotten.
    fn snapshot(&self) -> Vec<String> {
        let now = SystemTime::now();
        let mut owned = self.owned.lock();
        owned.retain(|_, expires| *expires > now);
        owned.keys().cloned().collect()
    }

    /// Revokes `lease_id` in Vault and forgets it (see [`grant::revoke`]).
    pub(super) async fn revoke(&self, lease_id: &str) -> Result<(), StoreError> {
        grant::revoke(&self.vault, lease_id).await?;
        self.owned.lock().remove(lease_id);
        Ok(())
    }

    /// Waits until this replica's leftovers are revoked (the start
    /// sweep), so no credential it issues now is mistaken for one.
    pub(super) async fn wait_for_start_sweep(&self) -> Result<(), StoreError> {
        let mut started = self.started.subscribe();
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
        self.vault.config.mounts.iter().any(|m| {
            m.engine == Engine::Database
                && m.revoke_on_start
                && lease_id
                    .strip_prefix(&creds_path(m))
                    .is_some_and(|rest| rest.starts_with('/') && !rest.contains(".."))
        })
    }

    /// `<mount>/data/<path>/<replica>` or `<mount>/metadata/...`.
    fn path(&self, kind: &str, replica: &str) -> Option<String> {
        let (mount, path) = self.vault.config.registry_location()?;
        Some(format!("{mount}/{kind}/{path}/{replica}"))
    }

    /// Writes this replica's record (the heartbeat); Vault's time of the
    /// write.
    async fn write(&self) -> Result<SystemTime, StoreError> {
        let Some(path) = self.path("data", &self.vault.config.replica_id) else {
            return Err(StoreError::Internal("no lease registry".into()));
        };
        let _one = self.writing.lock().await;
        let body = serde_json::json!({"data": {
            "replica": self.vault.config.replica_id,
            "leases": self.snapshot(),
        }});
        let answer = self
            .vault
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
    pub(super) async fn record(&self) {
        if !self.vault.config.revokes_on_start() {
            return;
        }
        if let Err(error) = self.write().await {
            tracing::warn!(%error, "could not record this replica's leases in the lease registry");
        }
    }

    /// A replica's record: its leases and the time of its last heartbeat.
    async fn read(&self, replica: &str) -> Result<Option<(Vec<String>, SystemTime)>, StoreError> {
        let Some(path) = self.path("data", replica) else {
            return Ok(None);
        };
        let Some(value) = self.get(&path).await? else {
            return Ok(None);
        };
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

    /// A registry answer as JSON; `None` when Vault has nothing there.
    async fn get(&self, path: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let answer = match self
            .vault
            .call(|c| async move { raw(&c, http::Method::GET, path, None).await })
            .await
        {
            Ok(answer) => answer,
            Err(CallError::NotFound) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&answer)
            .map(Some)
            .map_err(|_| StoreError::Internal("Vault's registry answer is not JSON".into()))
    }

    /// The replicas with a record.
    async fn replicas(&self) -> Result<Vec<String>, StoreError> {
        let Some(path) = self.path("metadata", "") else {
            return Ok(Vec::new());
        };
        let path = format!("{}?list=true", path.trim_end_matches('/'));
        let Some(value) = self.get(&path).await? else {
            return Ok(Vec::new());
        };
        Ok(value["data"]["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str())
            .filter(|k| valid_replica_id(k))
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
        if let Some(path) = self.path("metadata", replica) {
            let result = self
                .vault
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
        let own = self.vault.config.replica_id.clone();
        let left = self.read(&own).await?;
        if let Some((leases, _)) = left {
            self.revoke_leftovers(&own, &leases).await?;
        }
        self.write().await?;
        Ok(())
    }

    /// Revokes the leases of replicas whose heartbeat is older than
    /// `expireAfter` at `now` (Vault's time of this replica's heartbeat).
    async fn sweep_stale(&self, now: SystemTime) -> Result<(), StoreError> {
        let expire_after = self.vault.config.lease_registry.expire_after;
        for replica in self.replicas().await? {
            if replica == self.vault.config.replica_id {
                continue;
            }
            let Some((leases, at)) = self.read(&replica).await? else {
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
}

/// The lease registry's life: the start sweep, retried until it succeeds
/// (issues wait for it), then a heartbeat every `heartbeat`. Replicas whose
/// heartbeat went stale are swept only once this replica has itself reached
/// Vault for `expireAfter` without a miss: after an outage every live
/// replica gets the time to heartbeat again before anyone judges it gone.
pub(super) async fn registry_loop(weak: Weak<Registry>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let Some(registry) = weak.upgrade() else {
            return;
        };
        match registry.start_sweep().await {
            Ok(()) => {
                registry.started.send_replace(true);
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "could not revoke the leases this replica left; retrying")
            }
        }
        drop(registry);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    let mut healthy_since: Option<SystemTime> = None;
    loop {
        let Some(config) = weak
            .upgrade()
            .map(|r| r.vault.config.lease_registry.clone())
        else {
            return;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.heartbeat) => {}
        }
        let Some(registry) = weak.upgrade() else {
            return;
        };
        match registry.write().await {
            Ok(now) => {
                let since = *healthy_since.get_or_insert(now);
                if now.duration_since(since).unwrap_or_default() >= config.expire_after
                    && let Err(error) = registry.sweep_stale(now).await
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
