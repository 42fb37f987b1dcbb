//! Which broker path prefixes live on which Vault mount, and how a broker
//! path is routed to one.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::duration::{duration, optional_duration};

/// One broker path prefix mapped to a KV mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountConfig {
    /// Broker paths equal to this or under `prefix/` use this mount.
    /// The empty prefix matches every path.
    pub prefix: String,
    /// The KV mount path in Vault, e.g. `secret`.
    pub mount: String,
    /// KV engine version: 1 or 2.
    #[serde(default = "default_kv")]
    pub kv: u8,
    /// What replaces `prefix` inside the mount; by default the prefix stays,
    /// so broker path `shop/db` is `shop/db` in the mount.
    #[serde(default)]
    pub path: Option<String>,
    /// The secrets engine behind the mount: `kv` (default) or `database`,
    /// whose credentials are leased per workload (see docs/dynamic.md).
    #[serde(default, rename = "type")]
    pub engine: Engine,
    /// For a `database` mount: the role whose credentials the broker path
    /// (exactly `prefix`) hands out.
    #[serde(default)]
    pub role: Option<String>,
    /// For a leased mount: who shares one credential.
    #[serde(default)]
    pub lease_per: LeasePer,
    /// For a leased mount: how long a lease outlives its holder's last watch
    /// before it is revoked.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub grace: Duration,
    /// For a leased mount: revoke every lease of the role when the broker
    /// starts, so a crash leaks none. Turn off when several replicas share
    /// the role (each would revoke the others' leases).
    #[serde(default = "default_true")]
    pub revoke_on_start: bool,
    /// For a `pki` mount with a single trusted issuer: the SPIFFE trust
    /// domain of the URI SAN `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>`
    /// (default `cluster.local`). With several issuers the trust domain
    /// follows the issuer (`trustDomain` of each authenticator in
    /// `--auth-config`), and this is refused: see
    /// [`super::VaultConfig::resolve_trust_domains`].
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// For a `pki` mount: the trust domain of each trusted issuer, filled
    /// by [`super::VaultConfig::resolve_trust_domains`]. A caller whose issuer is
    /// not here is issued nothing.
    #[serde(skip)]
    pub trust_domains: BTreeMap<String, String>,
    /// For a `pki` mount: DNS names every certificate of the path carries
    /// (the first is also the common name).
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// For a `pki` mount: the certificate lifetime asked for (the role's
    /// default when absent).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
}

/// The secrets engine behind a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Engine {
    /// Key/value (version `kv`).
    #[default]
    Kv,
    /// Dynamic database credentials, leased per workload.
    Database,
    /// Certificates from the PKI engine, issued per workload.
    Pki,
}

/// Who shares one leased credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeasePer {
    /// Each pod its own (pods without pod claims: per service account).
    #[default]
    Pod,
    /// All pods of a service account one.
    ServiceAccount,
}

impl MountConfig {
    /// Whether the mount hands out leased credentials rather than KV values.
    pub fn is_leased(&self) -> bool {
        self.engine != Engine::Kv
    }
}

fn default_kv() -> u8 {
    2
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

/// The mount serving broker path `path` (the longest prefix wins), and the
/// path inside it.
pub(super) fn route<'a>(
    mounts: &'a [MountConfig],
    path: &str,
) -> Option<(&'a MountConfig, String)> {
    mounts
        .iter()
        .filter_map(|m| {
            let prefix = m.prefix.trim_matches('/');
            let rest = if prefix.is_empty() {
                Some(path)
            } else if path == prefix {
                Some("")
            } else {
                path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
            };
            rest.map(|rest| (m, prefix.len(), rest))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(m, _, rest)| {
            let base = m
                .path
                .as_deref()
                .unwrap_or(m.prefix.as_str())
                .trim_matches('/');
            let inner = match (base.is_empty(), rest.is_empty()) {
                (true, _) => rest.to_string(),
                (false, true) => base.to_string(),
                (false, false) => format!("{base}/{rest}"),
            };
            (m, inner)
        })
}

/// The names in `folder` that mounts' prefixes make (see
/// `VaultConfig::names_above_mounts`).
pub(super) fn names_above(mounts: &[MountConfig], folder: &str) -> Vec<String> {
    let folder = folder.trim_matches('/');
    let mut names: Vec<String> = mounts
        .iter()
        .filter_map(|m| {
            let prefix = m.prefix.trim_matches('/');
            let rest = if folder.is_empty() {
                prefix
            } else {
                prefix.strip_prefix(folder)?.strip_prefix('/')?
            };
            if rest.is_empty() {
                return None;
            }
            Some(match rest.split_once('/') {
                Some((segment, _)) => format!("{segment}/"),
                None if m.is_leased() => rest.to_string(),
                None => format!("{rest}/"),
            })
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts(yaml: &str) -> Vec<MountConfig> {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_paths_map_into_the_mount() {
        let c = mounts(
            "- {prefix: shop, mount: secret}\n- {prefix: shop/legacy, mount: kv1, kv: 1, path: \"\"}\n- {prefix: \"\", mount: other, path: broker}\n",
        );
        let (m, p) = route(&c, "shop/db").unwrap();
        assert_eq!(
            (m.mount.as_str(), m.kv, p.as_str()),
            ("secret", 2, "shop/db")
        );
        let (m, p) = route(&c, "shop/legacy/x").unwrap();
        assert_eq!((m.mount.as_str(), m.kv, p.as_str()), ("kv1", 1, "x"));
        let (m, p) = route(&c, "shopping/x").unwrap();
        assert_eq!(
            (m.mount.as_str(), p.as_str()),
            ("other", "broker/shopping/x")
        );
    }

    #[test]
    fn folders_above_the_mounts_list_the_mounts_prefixes() {
        let c = mounts(
            "- {prefix: shop, mount: secret}\n- {prefix: legacy/old, mount: kv1, kv: 1}\n- {prefix: shop/pg, mount: database, type: database, role: shop}\n",
        );
        assert_eq!(names_above(&c, ""), ["legacy/", "shop/"]);
        assert_eq!(names_above(&c, "legacy"), ["old/"]);
        assert_eq!(names_above(&c, "shop"), ["pg"]);
        assert!(names_above(&c, "shop/pg").is_empty());
        assert!(names_above(&c, "other").is_empty());
    }
}
