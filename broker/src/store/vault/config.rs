//! The Vault store's configuration: a small YAML file (`--vault-config`),
//! with the address and CA also settable by flags.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// Everything the Vault store needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault.example:8200`.
    #[serde(default)]
    pub address: String,
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

/// The broker's own identity towards Vault.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "camelCase", deny_unknown_fields)]
pub enum AuthConfig {
    /// A token in a file (written by an operator or another agent). Renewed
    /// while renewable; the file is read again when renewal fails.
    #[serde(rename_all = "camelCase")]
    Token { token_file: PathBuf },
    /// AppRole with role_id and secret_id in files.
    #[serde(rename_all = "camelCase")]
    Approle {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
    /// Vault's `kubernetes` auth method with the broker's service-account token.
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        role: String,
        #[serde(default = "default_sa_token")]
        token_file: PathBuf,
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
    },
    /// Vault's `jwt` auth method with the broker's service-account token
    /// (the same login, checked against the cluster's JWKS).
    #[serde(rename_all = "camelCase")]
    Jwt {
        role: String,
        #[serde(default = "default_sa_token")]
        token_file: PathBuf,
        #[serde(default = "default_jwt_mount")]
        mount: String,
    },
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_sa_token() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

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
    /// [`VaultConfig::resolve_trust_domains`].
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// For a `pki` mount: the trust domain of each trusted issuer, filled
    /// by [`VaultConfig::resolve_trust_domains`]. A caller whose issuer is
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

/// The value cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a read value is served without asking Vault again.
    #[serde(default = "default_cache_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Upper bound on cached secret bytes.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
    /// While Vault is unreachable or sealed, cached values are served until
    /// they are this old (counted from the last successful read).
    #[serde(default = "default_staleness", deserialize_with = "duration")]
    pub max_staleness: Duration,
    /// How long "not found" is remembered, so a caller asking again and
    /// again for a missing path costs one Vault read per period (0s: off).
    #[serde(default = "default_negative_ttl", deserialize_with = "duration")]
    pub negative_ttl: Duration,
    /// Upper bound on remembered "not found" answers.
    #[serde(default = "default_negative_entries")]
    pub max_negative_entries: usize,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_cache_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_staleness() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(2)
}
fn default_negative_entries() -> usize {
    10_000
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: default_cache_ttl(),
            max_bytes: default_cache_bytes(),
            max_staleness: default_staleness(),
            negative_ttl: default_negative_ttl(),
            max_negative_entries: default_negative_entries(),
        }
    }
}

/// Change detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollConfig {
    /// How often each watched path's metadata is polled.
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub interval: Duration,
    /// Random spread added to each interval, as a fraction of it (0..=1).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: default_poll(),
            jitter: default_jitter(),
        }
    }
}

/// Protection of the Vault server.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitConfig {
    /// At most this many requests per second to Vault (0: unlimited).
    #[serde(default = "default_rate")]
    pub max_requests_per_second: u32,
    /// Retries of a request that failed with 429, 5xx or a transport error.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The first backoff; doubled on each retry, with full jitter.
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// The largest backoff.
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Each caller identity's share of Vault reads per second (0: no
    /// per-identity limit), so one tenant cannot use up the whole budget.
    #[serde(default = "default_identity_rate")]
    pub per_identity_requests_per_second: u32,
    /// How many reads an identity may make at once above its rate.
    #[serde(default = "default_identity_burst")]
    pub per_identity_burst: u32,
    /// How long a read may wait for its identity's share before it is
    /// refused with `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_identity_wait", deserialize_with = "duration")]
    pub per_identity_max_wait: Duration,
}

fn default_rate() -> u32 {
    200
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_identity_rate() -> u32 {
    50
}
fn default_identity_burst() -> u32 {
    100
}
fn default_identity_wait() -> Duration {
    Duration::from_secs(1)
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_requests_per_second: default_rate(),
            max_retries: default_retries(),
            initial_backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            request_timeout: default_timeout(),
            per_identity_requests_per_second: default_identity_rate(),
            per_identity_burst: default_identity_burst(),
            per_identity_max_wait: default_identity_wait(),
        }
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The trust domain of a single-issuer setup that names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Whether `name` is a SPIFFE trust domain: lowercase letters, digits,
/// `.`, `-` and `_`, at most 255 of them.
pub fn valid_trust_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Vault config: {0}")]
    Parse(String),
    #[error("invalid Vault config: {0}")]
    Invalid(String),
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

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.address.is_empty() {
            return invalid("address is required".into());
        }
        if !(self.address.starts_with("http://") || self.address.starts_with("https://")) {
            return invalid("address must start with http:// or https://".into());
        }
        // Tokens, secret values and leases cross this connection: in clear
        // only to this machine (an agent or a test server on loopback).
        if self.address.starts_with("http://") && !is_loopback_url(&self.address) {
            return invalid(format!(
                "address {}: http:// is allowed only to a loopback address (127.0.0.0/8, [::1], localhost); use https://",
                self.address
            ));
        }
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
            self.validate_registry()?;
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
        let mount = match &self.lease_registry.mount {
            Some(mount) => mount.clone(),
            None => self
                .mounts
                .iter()
                .find(|m| m.engine == Engine::Kv && m.kv == 2)?
                .mount
                .clone(),
        };
        Some((
            mount.trim_matches('/').to_string(),
            self.lease_registry.path.trim_matches('/').to_string(),
        ))
    }

    fn validate_registry(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let registry = &self.lease_registry;
        let Some((mount, path)) = self.registry_location() else {
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
        if registry.heartbeat.is_zero() || registry.expire_after < registry.heartbeat * 2 {
            return invalid(
                "leaseRegistry: heartbeat must be positive and expireAfter at least twice it"
                    .into(),
            );
        }
        if !valid_replica_id(&self.replica_id) {
            return invalid(format!(
                "replica id {:?}: letters, digits, '.', '-', '_' only",
                self.replica_id
            ));
        }
        // A caller who could write the registry through a broker path
        // could make replicas revoke leases: no route may reach it.
        for m in self.mounts.iter().filter(|m| !m.is_leased()) {
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

    /// Gives each `pki` mount the trust domain of every trusted issuer:
    /// `issuers` is each authenticator's issuer and its `trustDomain`.
    ///
    /// Two clusters' `shop/web` must not get one SPIFFE ID, so the trust
    /// domain follows the issuer of the caller's token. With one issuer it
    /// is the authenticator's `trustDomain`, else the mount's, else
    /// `cluster.local`. With several, every issuer needs its own
    /// `trustDomain` and a mount may not set one: the configuration is
    /// refused at start rather than certificates issued under a guess.
    pub fn resolve_trust_domains(
        &mut self,
        issuers: &[(String, Option<String>)],
    ) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (issuer, domain) in issuers {
            if let Some(domain) = domain
                && !valid_trust_domain(domain)
            {
                return invalid(format!(
                    "issuer {issuer:?}: trustDomain {domain:?} is not a SPIFFE trust domain \
                     (lowercase letters, digits, '.', '-', '_')"
                ));
            }
        }
        for mount in self.mounts.iter_mut().filter(|m| m.engine == Engine::Pki) {
            if let Some(domain) = &mount.trust_domain
                && !valid_trust_domain(domain)
            {
                return invalid(format!(
                    "mount {}: trustDomain {domain:?} is not a SPIFFE trust domain",
                    mount.prefix
                ));
            }
            let domains = match issuers {
                [] => BTreeMap::new(),
                [(issuer, own)] => {
                    let domain = match (own, &mount.trust_domain) {
                        (Some(a), Some(b)) if a != b => {
                            return invalid(format!(
                                "mount {}: trustDomain {b:?} differs from issuer {issuer:?}'s \
                                 trustDomain {a:?}: give it in one place",
                                mount.prefix
                            ));
                        }
                        (Some(a), _) => a.clone(),
                        (None, Some(b)) => b.clone(),
                        (None, None) => DEFAULT_TRUST_DOMAIN.to_string(),
                    };
                    BTreeMap::from([(issuer.clone(), domain)])
                }
                several => {
                    if mount.trust_domain.is_some() {
                        return invalid(format!(
                            "mount {}: with several issuers the trust domain follows the \
                             issuer: set trustDomain on each authenticator in --auth-config, \
                             not on the mount",
                            mount.prefix
                        ));
                    }
                    let missing: Vec<&str> = several
                        .iter()
                        .filter(|(_, d)| d.is_none())
                        .map(|(i, _)| i.as_str())
                        .collect();
                    if !missing.is_empty() {
                        return invalid(format!(
                            "mount {}: certificates name the caller's trust domain, and with \
                             several issuers each needs its own: set trustDomain for {} in \
                             --auth-config",
                            mount.prefix,
                            missing.join(", ")
                        ));
                    }
                    several
                        .iter()
                        .filter_map(|(i, d)| Some((i.clone(), d.clone()?)))
                        .collect()
                }
            };
            mount.trust_domains = domains;
        }
        Ok(())
    }

    /// The names in `folder` that mounts' prefixes make, with no Vault
    /// request: the root of a store whose mounts sit at `shop` and
    /// `legacy` holds `shop/` and `legacy/`. A KV mount's prefix is a
    /// folder; a leased mount's, exactly one path, is a name.
    pub fn names_above_mounts(&self, folder: &str) -> Vec<String> {
        let folder = folder.trim_matches('/');
        let mut names: Vec<String> = self
            .mounts
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

    /// The mount serving broker path `path`, and the path inside it.
    pub fn route(&self, path: &str) -> Option<(&MountConfig, String)> {
        self.mounts
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
}

/// Whether `address`'s host is this machine: 127.0.0.0/8, `::1` or
/// `localhost`.
fn is_loopback_url(address: &str) -> bool {
    match url::Url::parse(address)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
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
    fn longest_prefix_wins_and_paths_map_into_the_mount() {
        let c = VaultConfig::from_yaml(YAML).unwrap();
        c.validate().unwrap();
        let (m, p) = c.route("shop/db").unwrap();
        assert_eq!(
            (m.mount.as_str(), m.kv, p.as_str()),
            ("secret", 2, "shop/db")
        );
        let (m, p) = c.route("shop/legacy/x").unwrap();
        assert_eq!((m.mount.as_str(), m.kv, p.as_str()), ("kv1", 1, "x"));
        let (m, p) = c.route("shopping/x").unwrap();
        assert_eq!(
            (m.mount.as_str(), p.as_str()),
            ("other", "broker/shopping/x")
        );
        assert_eq!(c.cache.ttl, Duration::from_secs(5));
        assert_eq!(c.cache.max_staleness, Duration::from_secs(60));
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
    fn folders_above_the_mounts_list_the_mounts_prefixes() {
        let c = VaultConfig::from_yaml(
            "address: https://v:8200\nauth: {method: token, tokenFile: /t}\nmounts:\n  - {prefix: shop, mount: secret}\n  - {prefix: legacy/old, mount: kv1, kv: 1}\n  - {prefix: shop/pg, mount: database, type: database, role: shop}\n",
        )
        .unwrap();
        assert_eq!(c.names_above_mounts(""), ["legacy/", "shop/"]);
        assert_eq!(c.names_above_mounts("legacy"), ["old/"]);
        assert_eq!(c.names_above_mounts("shop"), ["pg"]);
        assert!(c.names_above_mounts("shop/pg").is_empty());
        assert!(c.names_above_mounts("other").is_empty());
    }

    #[test]
    fn plaintext_http_is_refused_off_this_machine() {
        let with = |address: &str| {
            VaultConfig::from_yaml(&format!(
                "address: {address}\nauth: {{method: token, tokenFile: /t}}\nmounts: [{{prefix: a, mount: s}}]"
            ))
            .unwrap()
            .validate()
        };
        for local in [
            "http://127.0.0.1:8200",
            "http://127.3.4.5:8200",
            "http://[::1]:8200",
            "http://localhost:8200",
            "https://vault.example:8200",
            "https://10.0.0.7:8200",
        ] {
            with(local).unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        for remote in [
            "http://vault.example:8200",
            "http://10.0.0.7:8200",
            "http://[fd00::1]:8200",
            "http://localhost.example:8200",
            "http://127.0.0.1.nip.io:8200",
        ] {
            let error = with(remote).unwrap_err().to_string();
            assert!(error.contains("loopback"), "{remote}: {error}");
        }
    }

    fn pki(mount_domain: &str) -> VaultConfig {
        VaultConfig::from_yaml(&format!(
            "address: http://127.0.0.1:8200\nauth: {{method: token, tokenFile: /t}}\n\
             mounts: [{{prefix: shop/tls, mount: pki, type: pki, role: web{mount_domain}}}]"
        ))
        .unwrap()
    }

    fn issuer(name: &str, domain: Option<&str>) -> (String, Option<String>) {
        (name.to_string(), domain.map(str::to_string))
    }

    #[test]
    fn one_issuer_gets_its_trust_domain_or_the_mount_s_or_cluster_local() {
        let mut c = pki("");
        c.resolve_trust_domains(&[issuer("a", None)]).unwrap();
        assert_eq!(c.mounts[0].trust_domains["a"], "cluster.local");
        let mut c = pki(", trustDomain: prod.example");
        c.resolve_trust_domains(&[issuer("a", None)]).unwrap();
        assert_eq!(c.mounts[0].trust_domains["a"], "prod.example");
        let mut c = pki("");
        c.resolve_trust_domains(&[issuer("a", Some("a.example"))])
            .unwrap();
        assert_eq!(c.mounts[0].trust_domains["a"], "a.example");
        let mut c = pki(", trustDomain: prod.example");
        assert!(
            c.resolve_trust_domains(&[issuer("a", Some("a.example"))])
                .is_err()
        );
    }

    #[test]
    fn several_issuers_need_a_trust_domain_each_and_none_on_the_mount() {
        let mut c = pki("");
        let error = c
            .resolve_trust_domains(&[issuer("a", Some("a.example")), issuer("b", None)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("set trustDomain for b"), "{error}");
        let mut c = pki(", trustDomain: cluster.local");
        assert!(
            c.resolve_trust_domains(&[
                issuer("a", Some("a.example")),
                issuer("b", Some("b.example"))
            ])
            .is_err()
        );
        let mut c = pki("");
        c.resolve_trust_domains(&[
            issuer("a", Some("a.example")),
            issuer("b", Some("b.example")),
        ])
        .unwrap();
        assert_eq!(c.mounts[0].trust_domains["a"], "a.example");
        assert_eq!(c.mounts[0].trust_domains["b"], "b.example");
        let mut c = pki("");
        assert!(
            c.resolve_trust_domains(&[issuer("a", Some("A/../x"))])
                .is_err()
        );
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
        assert_eq!(m.grace, Duration::from_secs(5));
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
