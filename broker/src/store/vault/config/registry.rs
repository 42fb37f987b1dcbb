//! The lease registry's place in Vault and this replica's name in it.

use std::time::Duration;

use serde::Deserialize;

use super::{
    duration::duration,
    error::ConfigError,
    mounts::{Engine, MountConfig},
};

/// The lease registry: a KV v2 secret per replica,
/// `<mount>/<path>/<replica id>`, listing the database leases the replica
/// holds. Rewritten every `heartbeat` (its version's time is the replica's
/// heartbeat, on Vault's clock) and whenever a lease is issued.
///
/// At start a replica revokes the leases in its own record (what it left
/// when it stopped or crashed), then, every heartbeat, those of replicas
/// whose record is older than `expireAfter` (stopped, crashed, or a
/// Deployment's old pod, whose name is never used again), and deletes
/// their records. Leases of live replicas are never touched.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRegistryConfig {
    /// A KV v2 mount; by default the first KV v2 mount of `mounts`.
    #[serde(default)]
    pub mount: Option<String>,
    /// The folder in the mount; no broker path may map to it.
    #[serde(default = "default_registry_path")]
    pub path: String,
    /// How often each replica rewrites its record.
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// A record this much older than the newest heartbeat is a replica
    /// that is gone: its leases are revoked. At least twice `heartbeat`.
    #[serde(default = "default_expire_after", deserialize_with = "duration")]
    pub expire_after: Duration,
}

fn default_registry_path() -> String {
    "coffer-leases".into()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}
fn default_expire_after() -> Duration {
    Duration::from_secs(120)
}

impl Default for LeaseRegistryConfig {
    fn default() -> Self {
        Self {
            mount: None,
            path: default_registry_path(),
            heartbeat: default_heartbeat(),
            expire_after: default_expire_after(),
        }
    }
}

/// The host name (a pod's name in Kubernetes), else `coffer-broker`.
pub fn default_replica_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| valid_replica_id(h))
        .unwrap_or_else(|| "coffer-broker".into())
}

/// Whether `id` may name a replica (and so a registry record): letters,
/// digits, `.`, `-` and `_`, at most 253.
pub fn valid_replica_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !id.starts_with('.')
}

impl LeaseRegistryConfig {
    /// The registry's KV v2 mount and folder: `mount`, else the first KV
    /// v2 mount of `mounts`.
    pub(super) fn location(&self, mounts: &[MountConfig]) -> Option<(String, String)> {
        let mount = match &self.mount {
            Some(mount) => mount.clone(),
            None => mounts
                .iter()
                .find(|m| m.engine == Engine::Kv && m.kv == 2)?
                .mount
                .clone(),
        };
        Some((
            mount.trim_matches('/').to_string(),
            self.path.trim_matches('/').to_string(),
        ))
    }

    /// Checks the registry's place, its timing and `replica_id`.
    pub(super) fn validate(
        &self,
        mounts: &[MountConfig],
        replica_id: &str,
    ) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let Some((mount, path)) = self.location(mounts) else {
            return invalid(
                "revokeOnStart needs a lease registry: give leaseRegistry.mount (a KV v2 mount), \
                 or set revokeOnStart: false"
                    .into(),
            );
        };
        if mount.is_empty() || path.is_empty() || path.split('/').any(|s| s.is_empty() || s == "..")
        {
            return invalid(format!(
                "leaseRegistry: {mount:?}/{path:?} is not a KV path"
            ));
        }
        if self.heartbeat.is_zero() || self.expire_after < self.heartbeat * 2 {
            return invalid(
                "leaseRegistry: heartbeat must be positive and expireAfter at least twice it"
                    .into(),
            );
        }
        if !valid_replica_id(replica_id) {
            return invalid(format!(
                "replica id {replica_id:?}: letters, digits, '.', '-', '_' only"
            ));
        }
        // A caller who could write the registry through a broker path
        // could make replicas revoke leases: no route may reach it.
        for m in mounts.iter().filter(|m| !m.is_leased()) {
            if m.mount.trim_matches('/') != mount {
                continue;
            }
            let base = m.path.as_deref().unwrap_or(&m.prefix).trim_matches('/');
            if base.is_empty()
                || path == base
                || path.starts_with(&format!("{base}/"))
                || base.starts_with(&format!("{path}/"))
            {
                return invalid(format!(
                    "leaseRegistry: {mount}/{path} is reachable through the broker prefix {:?}: \
                     choose a path no broker path maps to",
                    m.prefix
                ));
            }
        }
        Ok(())
    }
}
