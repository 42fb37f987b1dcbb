//! One lease entry: the credential a holder has on a leased path, its
//! version channel, and what listings and the audit trail see of it.

use std::{collections::VecDeque, sync::atomic::AtomicBool};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::{
    super::config::{LeasePer, MountConfig},
    grant::Credential,
};
use crate::store::{Holder, LeaseInfo, StoreError};

/// An entry's key: the holder key and the broker path.
pub(super) type Key = (String, String);

/// How many (version, lease id) pairs an entry remembers, so the audit
/// record of a read finds its lease even if a rotation just happened.
const SERVED_KEPT: usize = 4;

pub(super) struct Held {
    pub(super) key: Key,
    pub(super) holder: Holder,
    pub(super) mount: MountConfig,
    pub(super) version: watch::Sender<u64>,
    pub(super) state: tokio::sync::Mutex<Option<Credential>>,
    pub(super) issued: Notify,
    /// Set under the entries lock when the entry leaves the table.
    pub(super) retired: AtomicBool,
    /// The last versions issued and their lease ids, newest last.
    served: Mutex<VecDeque<(u64, String)>>,
    /// What `ListLeases` shows of the credential, kept apart from `state`
    /// so a listing never waits for a renewal in flight.
    view: Mutex<Option<LeaseInfo>>,
}

impl Held {
    /// The version the next credential gets.
    pub(super) fn next_version(&self) -> u64 {
        self.served.lock().back().map_or(1, |(v, _)| v + 1)
    }

    pub(super) fn remember(&self, version: u64, lease_id: &str) {
        let mut served = self.served.lock();
        if served.len() == SERVED_KEPT {
            served.pop_front();
        }
        served.push_back((version, lease_id.to_string()));
    }

    /// Updates what listings show after `state` changed.
    pub(super) fn publish(&self, credential: Option<&Credential>) {
        *self.view.lock() = credential.map(|c| info(self, c));
    }

    /// What listings show, if a credential is held.
    pub(super) fn view(&self) -> Option<LeaseInfo> {
        self.view.lock().clone()
    }

    pub(super) fn new(key: Key, holder: &Holder, mount: &MountConfig) -> Self {
        Self {
            key,
            holder: holder.clone(),
            mount: mount.clone(),
            version: watch::Sender::new(0),
            state: tokio::sync::Mutex::new(None),
            issued: Notify::new(),
            retired: AtomicBool::new(false),
            served: Mutex::new(VecDeque::new()),
            view: Mutex::new(None),
        }
    }

    /// The broker path.
    pub(super) fn path(&self) -> &str {
        &self.key.1
    }

    /// The lease that served `version`, if still remembered.
    pub(super) fn lease_of(&self, version: u64) -> Option<String> {
        self.served
            .lock()
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, id)| id.clone())
    }
}

pub(super) fn info(held: &Held, c: &Credential) -> LeaseInfo {
    LeaseInfo {
        holder: held.key.0.clone(),
        owner: held.holder.clone(),
        path: held.key.1.clone(),
        lease_id: c.lease_id.clone(),
        version: c.secret.version,
        issued_at: c.issued_wall,
        expires_at: c.expires_wall,
        failing: c.failing,
    }
}

/// The `coffer_leases` state of a credential: `Some(failing)`.
pub(super) fn gauge_state(c: Option<&Credential>) -> Option<bool> {
    c.map(|c| c.failing.is_some())
}

/// The kind of a failed issue or renewal: a fixed word for status and
/// metrics, never Vault's text.
pub(super) fn failure_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Throttled => "throttled",
        StoreError::NotFound => "refused",
        _ => "error",
    }
}

/// The holder key for `mount`: per pod unless the mount says otherwise.
pub(super) fn holder_key(holder: &Holder, mount: &MountConfig) -> String {
    match (mount.lease_per, holder.pod()) {
        (LeasePer::Pod, Some(pod)) => format!("{}/pod/{pod}", holder.tenant()),
        _ => holder.tenant(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::super::super::config::Engine;
    use super::*;

    #[test]
    fn holders_are_per_pod_unless_per_service_account() {
        let mut mount = MountConfig {
            prefix: "db/shop".into(),
            mount: "database".into(),
            kv: 2,
            path: None,
            engine: Engine::Database,
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
            namespace: "shop".into(),
            service_account: "web".into(),
            issuer: "iss".into(),
            pod_name: Some("web-1".into()),
            pod_uid: Some("uid-1".into()),
        };
        let no_pod = Holder {
            pod_name: None,
            pod_uid: None,
            ..pod.clone()
        };
        assert_eq!(holder_key(&pod, &mount), "iss shop/web/pod/uid-1");
        assert_eq!(holder_key(&no_pod, &mount), "iss shop/web");
        mount.lease_per = LeasePer::ServiceAccount;
        assert_eq!(holder_key(&pod, &mount), "iss shop/web");
    }
}
