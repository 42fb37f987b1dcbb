//! What a broker is built from: every setting of `coffer-broker serve`, as
//! plain data. The binary fills it from its flags; the dev command, tests
//! and the bench fill it by hand, with parts already built where they have
//! them (an authenticator, a policy, a store).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use zeroize::Zeroizing;

use crate::{
    auth::{Authenticator, config::AuthConfig},
    policy::Policy,
    server::ListenAddr,
    service::{AckLimits, Limits},
    store::SecretStore,
    tls::CertFiles,
};

/// Every setting of one broker. [`AppConfig::new`] starts from the
/// defaults of `coffer-broker serve`.
#[non_exhaustive]
pub struct AppConfig {
    /// Where [`App::bind`](super::App::bind) listens for gRPC.
    pub listen: ListenAddr,
    /// Write the bound address here once listening (useful with port 0).
    pub addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address at `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// TLS; without it only a local address is served, unless `insecure`.
    pub tls: Option<TlsSettings>,
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// Who the callers are.
    pub auth: AuthSource,
    /// What they may do.
    pub policy: PolicySource,
    /// Where the secrets live.
    pub store: StoreSource,
    /// The hash-chained audit trail, if one is kept.
    pub audit: Option<AuditSettings>,
    /// Bounds on what callers may hold open.
    pub limits: LimitSettings,
    /// The peer replicas told of every write.
    pub peers: PeerSettings,
}

/// Where the authenticator comes from.
pub enum AuthSource {
    /// An authentication config file (`--auth-config`), read at start.
    File(PathBuf),
    /// An authentication config already made (the `--jwks`/`--issuer`
    /// shorthand).
    Config(AuthConfig),
    /// An authenticator already built: it names no trust domains for the
    /// Vault store.
    Ready(Arc<dyn Authenticator>),
}

/// Where the policy comes from.
pub enum PolicySource {
    /// A YAML file, checked for changes every `reload_interval` (zero:
    /// never).
    File {
        /// The policy file.
        path: PathBuf,
        /// How often it is checked for changes.
        reload_interval: Duration,
    },
    /// A policy already parsed, never reloaded.
    Fixed(Policy),
}

/// Where the secrets live.
pub enum StoreSource {
    /// The embedded dev store in memory: every secret is lost at exit.
    DevMemory,
    /// The embedded dev store, sealed in `file`.
    DevFile {
        /// The sealed file.
        file: PathBuf,
        /// Its key; none is a configuration mistake.
        key: Option<DevKey>,
    },
    /// Vault or OpenBao.
    Vault(VaultSettings),
    /// A store already built.
    Ready(Arc<dyn SecretStore>),
}

/// The dev store's 32-byte key (raw or base64).
pub enum DevKey {
    /// Read from this file.
    File(PathBuf),
    /// Given as it is (`COFFER_DEV_STORE_KEY`).
    Material(Zeroizing<Vec<u8>>),
}

/// The Vault store's configuration file and the flags that override it.
#[derive(Default)]
pub struct VaultSettings {
    /// The YAML configuration; none is a configuration mistake.
    pub config: Option<PathBuf>,
    /// Overrides the config's Vault address (or `addresses`) with this one.
    pub addr: Option<String>,
    /// Overrides the config's CA bundle for Vault's certificate.
    pub ca_file: Option<PathBuf>,
    /// Overrides this replica's name in the lease registry.
    pub replica_id: Option<String>,
}

/// The server certificate and how often its files are checked.
pub struct TlsSettings {
    /// The certificate chain and key files.
    pub files: CertFiles,
    /// How often they are checked for a renewal (zero: never).
    pub reload_interval: Duration,
}

/// The audit trail's settings; [`AuditSettings::new`] holds the flags'
/// defaults.
pub struct AuditSettings {
    /// The trail's file; `-` is stdout.
    pub path: PathBuf,
    /// Rotate the file once it would exceed this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotated files kept (0: all).
    pub keep: usize,
    /// Link records with HMAC-SHA256 keyed by this file's bytes.
    pub hmac_key_file: Option<PathBuf>,
    /// Repeated authentication failures counted into one record per
    /// interval (zero: one record each).
    pub aggregate_interval: Duration,
    /// How often the chain head is logged (zero: never).
    pub head_interval: Duration,
    /// Serve even when the trail cannot be written.
    pub fail_open: bool,
}

impl AuditSettings {
    /// A trail at `path` with the defaults of `coffer-broker serve`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: 100 * 1024 * 1024,
            keep: crate::audit::DEFAULT_KEEP,
            hmac_key_file: None,
            aggregate_interval: Duration::from_secs(10),
            head_interval: Duration::from_secs(60),
            fail_open: false,
        }
    }
}

/// Bounds on what callers may hold open.
#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    /// Watch streams per pod.
    pub watches_per_pod: usize,
    /// Watch streams per service account, for tokens bound to no pod.
    pub watches_per_account: usize,
    /// Watch streams in the whole broker; none: sized from the cgroup
    /// memory limit.
    pub max_watches: Option<usize>,
    /// Requests in flight per connection (0: unbounded).
    pub requests_per_connection: usize,
    /// How long `status` keeps a workload that no longer watches.
    pub ack_ttl: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            watches_per_pod: limits.watches_per_pod,
            watches_per_account: limits.watches_per_account,
            max_watches: None,
            requests_per_connection: limits.requests_per_connection,
            ack_ttl: AckLimits::default().ttl,
        }
    }
}

/// The peer replicas.
#[derive(Debug, Clone, Default)]
pub struct PeerSettings {
    /// Peer endpoints.
    pub urls: Vec<String>,
    /// The broker's own token, presented to peers.
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) for peers' certificates.
    pub ca_file: Option<PathBuf>,
    /// `ISSUER=NAMESPACE/SERVICEACCOUNT` allowed to tell of a peer's write.
    pub identities: Vec<String>,
}

impl AppConfig {
    /// A broker with these parts and the defaults of `coffer-broker serve`
    /// otherwise, listening on `127.0.0.1:0` without TLS.
    pub fn new(auth: AuthSource, policy: PolicySource, store: StoreSource) -> Self {
        Self {
            listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            addr_file: None,
            metrics_listen: None,
            tls: None,
            insecure: false,
            auth,
            policy,
            store,
            audit: None,
            limits: LimitSettings::default(),
            peers: PeerSettings::default(),
        }
    }
}
