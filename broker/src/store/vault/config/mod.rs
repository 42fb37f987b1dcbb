//! The Vault store's configuration: a small YAML file (`--vault-config`),
//! with the address and CA also settable by flags. Each part of the file
//! has its room: the login, the mounts and their routing, the trust
//! domains of certificates, the lease registry, and the tuning knobs.

mod address;
mod auth;
mod duration;
mod error;
mod mounts;
mod registry;
mod trust;
mod tuning;

use std::path::PathBuf;

use serde::Deserialize;

pub use address::MAX_ADDRESSES;
pub use auth::AuthConfig;
pub use error::ConfigError;
pub use mounts::{Engine, LeasePer, MountConfig};
pub use registry::{LeaseRegistryConfig, default_replica_id, valid_replica_id};
pub use trust::{DEFAULT_TRUST_DOMAIN, valid_trust_domain};
pub use tuning::{CacheConfig, LimitConfig, PollConfig};

/// Everything the Vault store needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`: one node, or a Service that follows
    /// the active node (`vault-active`). Excludes `addresses`.
    #[serde(default)]
    pub address: String,
    /// Every node of an HA cluster: the store talks to the active one,
    /// found by `/v1/sys/health`, and follows it when it changes.
    /// Excludes `address`.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Extra CA bundle (PEM) to trust for the Vault server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A Vault Enterprise / OpenBao namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How the broker logs in.
    pub auth: AuthConfig,
    /// Which broker path prefixes live on which mount.
    pub mounts: Vec<MountConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub limits: LimitConfig,
    /// Where each replica records the database leases it holds, so that
    /// `revokeOnStart` revokes only leftovers (see [`LeaseRegistryConfig`]).
    #[serde(default)]
    pub lease_registry: LeaseRegistryConfig,
    /// This broker replica's name in the lease registry (`--replica-id`,
    /// by default the host name: the pod's name in Kubernetes). Unique
    /// among the replicas running at one time.
    #[serde(skip, default = "default_replica_id")]
    pub replica_id: String,
}

impl VaultConfig {
    /// Parses YAML.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_norway::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Ok(config)
    }

    /// Reads and parses a YAML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// The node addresses: `addresses`, or the one `address`.
    pub fn nodes(&self) -> Vec<&str> {
        address::nodes(&self.address, &self.addresses)
    }

    /// Points the store at one address (`--vault-addr`), replacing the
    /// file's `address` or `addresses`.
    pub fn set_address(&mut self, address: String) {
        self.address = address;
        self.addresses.clear();
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        address::validate(&self.address, &self.addresses)?;
        if self.mounts.is_empty() {
            return invalid("at least one mount is required".into());
        }
        for m in &self.mounts {
            if m.kv != 1 && m.kv != 2 {
                return invalid(format!("mount {}: kv must be 1 or 2", m.mount));
            }
            if m.mount.trim_matches('/').is_empty() {
                return invalid(format!("prefix {:?}: mount is empty", m.prefix));
            }
            if m.is_leased() {
                let role = m.role.as_deref().unwrap_or("");
                if role.is_empty() || role.contains('/') || role.contains("..") {
                    return invalid(format!("mount {}: a leased mount needs a role", m.mount));
                }
                if m.prefix.trim_matches('/').is_empty() {
                    return invalid(format!("mount {}: a leased mount needs a prefix", m.mount));
                }
            }
        }
        if self.revokes_on_start() {
            self.lease_registry
                .validate(&self.mounts, &self.replica_id)?;
        }
        if !(0.0..=1.0).contains(&self.poll.jitter) {
            return invalid("poll.jitter must be between 0 and 1".into());
        }
        if self.poll.interval.is_zero() {
            return invalid("poll.interval must be positive".into());
        }
        Ok(())
    }

    /// Whether a database mount revokes leftover leases at start (and so
    /// the lease registry is used).
    pub fn revokes_on_start(&self) -> bool {
        self.mounts
            .iter()
            .any(|m| m.engine == Engine::Database && m.revoke_on_start)
    }

    /// The registry's KV v2 mount and folder (validated).
    pub fn registry_location(&self) -> Option<(String, String)> {
        self.lease_registry.location(&self.mounts)
    }

    /// Gives each `pki` mount the trust domain of every trusted issuer:
    /// `issuers` is each authenticator's issuer and its `trustDomain`.
    /// Two clusters' `shop/web` must not get one SPIFFE ID, so the trust
    /// domain follows the issuer; a setup that would leave it to a guess
    /// (several issuers without one each) is refused.
    pub fn resolve_trust_domains(
        &mut self,
        issuers: &[(String, Option<String>)],
    ) -> Result<(), ConfigError> {
        trust::resolve(&mut self.mounts, issuers)
    }

    /// The names in `folder` that mounts' prefixes make, with no Vault
    /// request: the root of a store whose mounts sit at `shop` and
    /// `legacy` holds `shop/` and `legacy/`. A KV mount's prefix is a
    /// folder; a leased mount's, exactly one path, is a name.
    pub fn names_above_mounts(&self, folder: &str) -> Vec<String> {
        mounts::names_above(&self.mounts, folder)
    }

    /// The mount serving broker path `path`, and the path inside it.
    pub fn route(&self, path: &str) -> Option<(&MountConfig, String)> {
        mounts::route(&self.mounts, path)
    }

    /// The leased mount serving exactly `path`, if any.
    pub fn leased_mount(&self, path: &str) -> Option<&MountConfig> {
        self.route(path)
            .map(|(m, _)| m)
            .filter(|m| m.is_leased() && path == m.prefix.trim_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
address: http://127.0.0.1:8200
auth: {method: approle, roleIdFile: /r, secretIdFile: /s}
mounts:
  - {prefix: shop, mount: secret}
  - {prefix: shop/legacy, mount: kv1, kv: 1, path: ""}
  - {prefix: "", mount: other, path: broker}
cache: {ttl: 5s, maxStaleness: 1m}
"#;

    #[test]
    fn a_file_parses_with_its_defaults_and_validates() {
        let c = VaultConfig::from_yaml(YAML).unwrap();
        c.validate().unwrap();
        let (m, p) = c.route("shop/legacy/x").unwrap();
        assert_eq!((m.mount.as_str(), m.kv, p.as_str()), ("kv1", 1, "x"));
        assert_eq!(c.cache.ttl, std::time::Duration::from_secs(5));
        assert_eq!(c.cache.max_staleness, std::time::Duration::from_secs(60));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(VaultConfig::from_yaml("address: x\nauth: {method: nope}\nmounts: []").is_err());
        let c = VaultConfig::from_yaml(
            "address: ftp://x\nauth: {method: token, tokenFile: /t}\nmounts: [{prefix: a, mount: s}]",
        )
        .unwrap();
        assert!(c.validate().is_err());
        let c = VaultConfig::from_yaml(
            "address: http://x\nauth: {method: token, tokenFile: /t}\nmounts: [{prefix: a, mount: s, kv: 3}]",
        )
        .unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_lease_registry_is_a_kv_v2_path_no_broker_path_reaches() {
        let base = "address: http://127.0.0.1:8200\nauth: {method: token, tokenFile: /t}\n";
        let with = |mounts: &str, registry: &str| {
            let c = VaultConfig::from_yaml(&format!("{base}mounts: {mounts}\n{registry}")).unwrap();
            c.validate().map(|()| c.registry_location())
        };
        let db = "{prefix: shop/pg, mount: database, type: database, role: shop}";
        let (mount, path) = with(&format!("[{{prefix: shop, mount: secret}}, {db}]"), "")
            .unwrap()
            .unwrap();
        assert_eq!((mount.as_str(), path.as_str()), ("secret", "coffer-leases"));
        // Every path of the mount is a broker path: refused.
        assert!(with(&format!("[{{prefix: \"\", mount: secret}}, {db}]"), "").is_err());
        assert!(
            with(
                &format!("[{{prefix: shop, mount: secret}}, {db}]"),
                "leaseRegistry: {path: shop/leases}"
            )
            .is_err()
        );
        // No KV v2 mount to default to: refused, unless revokeOnStart is off.
        assert!(with(&format!("[{db}]"), "").is_err());
        with(
            "[{prefix: shop/pg, mount: database, type: database, role: shop, revokeOnStart: false}]",
            "",
        )
        .unwrap();
        with(&format!("[{db}]"), "leaseRegistry: {mount: coffer}").unwrap();
        assert!(
            with(
                &format!("[{db}]"),
                "leaseRegistry: {mount: coffer, heartbeat: 10s, expireAfter: 15s}"
            )
            .is_err()
        );
    }

    #[test]
    fn a_database_mount_needs_a_role_and_a_prefix() {
        let base = "address: http://127.0.0.1:8200\nauth: {method: token, tokenFile: /t}\nmounts: ";
        let ok = VaultConfig::from_yaml(&format!(
            "{base}[{{prefix: db/shop, mount: database, type: database, role: shop, grace: 5s, leasePer: serviceAccount}}]\nleaseRegistry: {{mount: kv}}"
        ))
        .unwrap();
        ok.validate().unwrap();
        let m = &ok.mounts[0];
        assert!(m.is_leased());
        assert_eq!(m.lease_per, LeasePer::ServiceAccount);
        assert_eq!(m.grace, std::time::Duration::from_secs(5));
        assert!(m.revoke_on_start);
        for bad in [
            "[{prefix: db/shop, mount: database, type: database}]",
            "[{prefix: db/shop, mount: database, type: database, role: ../x}]",
            "[{prefix: \"\", mount: database, type: database, role: shop}]",
        ] {
            let c = VaultConfig::from_yaml(&format!("{base}{bad}")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
