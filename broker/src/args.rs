//! The flags of `coffer-broker`, and how `serve`'s become an [`AppConfig`].
//! Every flag, default and environment variable here is public surface:
//! the deployment manifests and the end-to-end tests name them.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use coffer_broker::{
    app::{
        AppConfig, AuditSettings, AuthSource, DevKey, LimitSettings, PeerSettings, PolicySource,
        StoreSource, TlsSettings, VaultSettings,
    },
    auth::config::AuthConfig,
    server::ListenAddr,
    service::Limits,
    tls::CertFiles,
};
use coffer_runtime::LogFormat;

use crate::dev;

#[derive(Parser)]
#[command(name = "coffer-broker", version, about = "The Coffer secrets broker")]
pub(crate) struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "COFFER_LOG_FORMAT",
        default_value = "plain"
    )]
    pub(crate) log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or RUST_LOG-style
    /// directives such as `info,coffer_broker::auth=debug`. Replaces RUST_LOG
    /// when given; without either, `info`.
    #[arg(long, global = true, env = "COFFER_LOG_LEVEL")]
    pub(crate) log_level: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Serve the broker.
    Serve(Box<ServeArgs>),
    /// Run a broker on the embedded dev store plus a sidecar writing to /dev/shm.
    Dev(dev::DevArgs),
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// `HOST:PORT` or `unix:/path/to.sock`.
    #[arg(long, env = "COFFER_LISTEN", default_value = "127.0.0.1:8443")]
    listen: ListenAddr,
    /// Write the bound address here once listening (useful with port 0).
    #[arg(long, env = "COFFER_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "COFFER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "COFFER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often the TLS certificate and key files are checked for a
    /// renewal (0s: never). A new pair is used for new connections; open
    /// ones keep theirs; a pair that does not load keeps the last good one.
    #[arg(long, env = "COFFER_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    tls_reload_interval: Duration,
    /// Allow plaintext on a non-loopback address. Never do this in a cluster.
    #[arg(long)]
    insecure: bool,
    /// The token issuer's JWKS file (single-issuer shorthand for --auth-config;
    /// reloaded when it changes).
    #[arg(
        long,
        env = "COFFER_JWKS_FILE",
        required_unless_present = "auth_config",
        conflicts_with = "auth_config",
        requires = "issuer"
    )]
    jwks: Option<PathBuf>,
    /// The exact `iss` of accepted tokens (with --jwks).
    #[arg(long, env = "COFFER_ISSUER", conflicts_with = "auth_config")]
    issuer: Option<String>,
    /// Authentication config (YAML): several issuers, OIDC discovery, static
    /// JWKS or PEM keys, TokenReview. See docs/auth.md.
    #[arg(long, env = "COFFER_AUTH_CONFIG")]
    auth_config: Option<PathBuf>,
    /// Serve Prometheus metrics on `HOST:PORT` at /metrics.
    #[arg(long, env = "COFFER_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The audience tokens must carry.
    #[arg(long, env = "COFFER_AUDIENCE", default_value = "coffer")]
    audience: String,
    /// Clock skew tolerated, in seconds.
    #[arg(long, env = "COFFER_LEEWAY_SECONDS", default_value_t = 30)]
    leeway: u64,
    /// The policy file (YAML).
    #[arg(long, env = "COFFER_POLICY_FILE")]
    policy: PathBuf,
    /// Persist the dev store to this sealed file (in memory when unset).
    #[arg(long, env = "COFFER_DEV_STORE_FILE", requires = "dev_store_key_file")]
    dev_store_file: Option<PathBuf>,
    /// The dev store's 32-byte key (raw or base64). Alternatively set
    /// COFFER_DEV_STORE_KEY to the base64 key.
    #[arg(long)]
    dev_store_key_file: Option<PathBuf>,
    /// How often the policy file is checked for changes (0s: never).
    #[arg(long, env = "COFFER_POLICY_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    policy_reload_interval: Duration,
    /// Write the hash-chained audit trail to this file (`-`: stdout).
    #[arg(long, env = "COFFER_AUDIT_FILE")]
    audit_file: Option<PathBuf>,
    /// Rotate the audit file once it would exceed this many bytes (0: never).
    #[arg(long, env = "COFFER_AUDIT_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    audit_max_bytes: u64,
    /// Keep at most this many rotated audit files, deleting the oldest
    /// (0: keep all). The oldest kept file then starts the chain.
    #[arg(long, env = "COFFER_AUDIT_KEEP", default_value_t = coffer_broker::audit::DEFAULT_KEEP)]
    audit_keep: usize,
    /// Link audit records with HMAC-SHA256 keyed by this file's bytes, so
    /// that whoever can write the trail but not read the key cannot
    /// recompute the chain.
    #[arg(long, env = "COFFER_AUDIT_HMAC_KEY_FILE")]
    audit_hmac_key_file: Option<PathBuf>,
    /// Count repeated authentication failures from one peer IP (per RPC and
    /// reason) into one audit record per interval (0s: one record each).
    #[arg(long, env = "COFFER_AUDIT_AGGREGATE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    audit_aggregate_interval: Duration,
    /// Log the audit chain head (next seq, last hash) at info this often
    /// (0s: never), so records cut off the end can be detected.
    #[arg(long, env = "COFFER_AUDIT_HEAD_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    audit_head_interval: Duration,
    /// Serve requests even when the audit trail cannot be written. By default
    /// they are refused (UNAVAILABLE).
    #[arg(long, env = "COFFER_AUDIT_FAIL_OPEN")]
    audit_fail_open: bool,
    /// Open WatchSecrets streams one pod (its token's pod uid) may hold; the
    /// next is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COFFER_MAX_WATCHES_PER_POD", default_value_t = Limits::default().watches_per_pod)]
    max_watches_per_pod: usize,
    /// Open WatchSecrets streams that the tokens bound to no pod of one
    /// service account (issuer, namespace, name) may hold together.
    #[arg(
        long,
        alias = "max-watches-per-identity",
        env = "COFFER_MAX_WATCHES_PER_ACCOUNT",
        default_value_t = Limits::default().watches_per_account
    )]
    max_watches_per_account: usize,
    /// Open WatchSecrets streams in the whole broker. Default: half the
    /// cgroup memory limit (memory.max) at 64 KiB a stream, or 50000
    /// without a limit (docs/metrics.md).
    #[arg(long, env = "COFFER_MAX_WATCHES")]
    max_watches: Option<usize>,
    /// Requests one connection may have in flight (0: unbounded); the excess
    /// is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COFFER_MAX_REQUESTS_PER_CONNECTION", default_value_t = Limits::default().requests_per_connection)]
    max_requests_per_connection: usize,
    /// How long `status` keeps listing a workload that acknowledged a
    /// version but no longer watches the path.
    #[arg(long, env = "COFFER_ACK_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ack_ttl: Duration,
    /// A peer replica to tell of every write and to ask in RotationStatus
    /// (repeatable; e.g. each pod of a StatefulSet).
    #[arg(long = "peer", env = "COFFER_PEERS", value_delimiter = ',')]
    peers: Vec<String>,
    /// The broker's own token, presented to peers. Required with --peer.
    #[arg(long, env = "COFFER_PEER_TOKEN_FILE")]
    peer_token_file: Option<PathBuf>,
    /// CA bundle (PEM) for peers' certificates.
    #[arg(long, env = "COFFER_PEER_CA_FILE")]
    peer_ca_file: Option<PathBuf>,
    /// ISSUER=NAMESPACE/SERVICEACCOUNT allowed to tell this broker of a
    /// peer's write (repeatable; usually the brokers' own service account
    /// of their own cluster's issuer). NAMESPACE/SERVICEACCOUNT alone only
    /// when exactly one issuer is trusted.
    #[arg(
        long = "peer-identity",
        env = "COFFER_PEER_IDENTITIES",
        value_delimiter = ','
    )]
    peer_identities: Vec<String>,
    /// Where secrets live: the embedded dev store, or Vault/OpenBao.
    #[arg(long, env = "COFFER_STORE", value_enum, default_value = "dev")]
    store: StoreKind,
    /// The Vault store's YAML configuration (auth method, mounts, cache,
    /// polling, limits; see docs/vault.md). Required with `--store vault`.
    #[arg(long, env = "COFFER_VAULT_CONFIG")]
    vault_config: Option<PathBuf>,
    /// Overrides the config's Vault address (or `addresses`) with this one.
    #[arg(long, env = "COFFER_VAULT_ADDR")]
    vault_addr: Option<String>,
    /// Overrides the config's CA bundle for Vault's TLS certificate.
    #[arg(long, env = "COFFER_VAULT_CA_FILE")]
    vault_ca_file: Option<PathBuf>,
    /// This replica's name in the Vault lease registry (revokeOnStart
    /// revokes only its own leftovers and those of replicas gone stale).
    /// Unique among running replicas. Default: the host name, i.e. the
    /// pod's name (docs/dynamic.md).
    #[arg(long, env = "COFFER_REPLICA_ID")]
    replica_id: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Dev,
    Vault,
}

impl ServeArgs {
    /// The broker these flags describe. Reads only the environment
    /// (`COFFER_DEV_STORE_KEY`); files are read by [`App::build`].
    ///
    /// [`App::build`]: coffer_broker::app::App::build
    pub(crate) fn into_config(self) -> anyhow::Result<AppConfig> {
        let auth = match (self.auth_config, self.jwks, self.issuer) {
            (Some(file), _, _) => AuthSource::File(file),
            (None, Some(jwks), Some(issuer)) => AuthSource::Config(AuthConfig::single_jwks_file(
                jwks,
                issuer,
                self.audience,
                Duration::from_secs(self.leeway),
            )),
            _ => {
                return Err(coffer_runtime::usage(
                    "give --auth-config, or --jwks with --issuer",
                ));
            }
        };
        let store = match self.dev_store_file {
            _ if self.store == StoreKind::Vault => StoreSource::Vault(VaultSettings {
                config: self.vault_config,
                addr: self.vault_addr,
                ca_file: self.vault_ca_file,
                replica_id: self.replica_id,
            }),
            None => StoreSource::DevMemory,
            Some(file) => StoreSource::DevFile {
                file,
                key: match self.dev_store_key_file {
                    Some(path) => Some(DevKey::File(path)),
                    None => std::env::var(coffer_broker::store::dev::KEY_ENV)
                        .ok()
                        .map(|key| DevKey::Material(key.into_bytes().into())),
                },
            },
        };
        let policy = PolicySource::File {
            path: self.policy,
            reload_interval: self.policy_reload_interval,
        };
        let mut config = AppConfig::new(auth, policy, store);
        config.listen = self.listen;
        config.addr_file = self.addr_file;
        config.metrics_listen = self.metrics_listen;
        config.tls = self
            .tls_cert
            .zip(self.tls_key)
            .map(|(cert, key)| TlsSettings {
                files: CertFiles { cert, key },
                reload_interval: self.tls_reload_interval,
            });
        config.insecure = self.insecure;
        config.audit = self.audit_file.map(|path| AuditSettings {
            path,
            max_bytes: self.audit_max_bytes,
            keep: self.audit_keep,
            hmac_key_file: self.audit_hmac_key_file,
            aggregate_interval: self.audit_aggregate_interval,
            head_interval: self.audit_head_interval,
            fail_open: self.audit_fail_open,
        });
        config.limits = LimitSettings {
            watches_per_pod: self.max_watches_per_pod,
            watches_per_account: self.max_watches_per_account,
            max_watches: self.max_watches,
            requests_per_connection: self.max_requests_per_connection,
            ack_ttl: self.ack_ttl,
        };
        config.peers = PeerSettings {
            urls: self.peers,
            token_file: self.peer_token_file,
            ca_file: self.peer_ca_file,
            identities: self.peer_identities,
        };
        Ok(config)
    }
}
