//! The live leases, by holder key and broker path, and the one way a
//! credential is issued for an entry.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use parking_lot::Mutex;

use super::{
    super::{
        backend::Backend,
        config::{Engine, MountConfig},
    },
    events::Events,
    grant::{self, Credential, creds_path},
    held::{Held, Key, holder_key},
    registry::Registry,
};
use crate::store::{Holder, LeaseInfo, StoreError};

pub(in super::super) struct Leases {
    pub(super) vault: Arc<Backend>,
    entries: Mutex<HashMap<Key, Arc<Held>>>,
    pub(super) registry: Arc<Registry>,
    pub(super) events: Events,
}

impl Leases {
    pub(super) fn new(vault: Arc<Backend>) -> Self {
        Self {
            registry: Arc::new(Registry::new(Arc::clone(&vault))),
            vault,
            entries: Mutex::default(),
            events: Events::default(),
        }
    }

    /// The entry of `holder` on `path`, and whether it was just created
    /// (and so needs its task).
    pub(super) fn entry(
        &self,
        holder: &Holder,
        path: &str,
        mount: &MountConfig,
    ) -> (Arc<Held>, bool) {
        let key = (holder_key(holder, mount), path.to_string());
        let mut entries = self.entries.lock();
        if let Some(held) = entries.get(&key) {
            return (Arc::clone(held), false);
        }
        let held = Arc::new(Held::new(key.clone(), holder, mount));
        entries.insert(key, Arc::clone(&held));
        (held, true)
    }

    /// Removes `held` from the table if nobody watches it; true if removed.
    pub(super) fn retire_if_unused(&self, held: &Arc<Held>) -> bool {
        let mut entries = self.entries.lock();
        if held.version.receiver_count() > 0 {
            return false;
        }
        held.retired.store(true, Ordering::Release);
        if entries.get(&held.key).is_some_and(|h| Arc::ptr_eq(h, held)) {
            entries.remove(&held.key);
        }
        true
    }

    /// The lease `holder` was served `version` of `path` under.
    pub(in super::super) fn lease_of(
        &self,
        holder: &Holder,
        path: &str,
        mount: &MountConfig,
        version: u64,
    ) -> Option<String> {
        let key = (holder_key(holder, mount), path.to_string());
        let held = self.entries.lock().get(&key).cloned()?;
        held.lease_of(version)
    }

    /// The entry whose current lease is `lease_id`.
    pub(super) fn find(&self, lease_id: &str) -> Option<Arc<Held>> {
        self.entries
            .lock()
            .values()
            .find(|h| h.view().is_some_and(|v| v.lease_id == lease_id))
            .cloned()
    }

    /// Every live lease, without credentials.
    pub(in super::super) fn list(&self) -> Vec<LeaseInfo> {
        let held: Vec<Arc<Held>> = self.entries.lock().values().cloned().collect();
        held.iter().filter_map(|h| h.view()).collect()
    }

    /// The broker paths a lease with this id could belong to, whether it
    /// exists or not.
    pub(in super::super) fn paths(&self, lease_id: &str) -> Vec<String> {
        self.vault
            .config
            .mounts
            .iter()
            .filter(|m| match m.engine {
                Engine::Database => lease_id.starts_with(&format!("{}/", creds_path(m))),
                Engine::Pki => lease_id.starts_with("pki:"),
                Engine::Kv => false,
            })
            .map(|m| m.prefix.trim_matches('/').to_string())
            .collect()
    }

    /// A new credential for `held` from Vault, as `version`. A database
    /// lease under `revokeOnStart` waits for the start sweep, and is
    /// recorded in the registry before it is served: a crash from then on
    /// leaves a lease the next start finds.
    pub(super) async fn issue(&self, held: &Held, version: u64) -> Result<Credential, StoreError> {
        let mount = &held.mount;
        let recorded = mount.engine == Engine::Database && mount.revoke_on_start;
        if recorded {
            self.registry.wait_for_start_sweep().await?;
        }
        let (path, grant) = grant::request(&self.vault, mount, &held.holder).await?;
        let expires_wall = grant.expires_wall();
        if recorded {
            self.registry.own(&grant.lease_id, expires_wall);
            self.registry.record().await;
        }
        Credential::new(&path, grant, version, expires_wall)
    }
}
