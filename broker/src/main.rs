//! `coffer-broker`: serve secrets, or run the whole system locally (`dev`).

mod dev;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use coffer::cli::{LogFormat, init_tracing_with_level, shutdown_signal};
use coffer_broker::tls::{CertFiles, ReloadingCert, serve_tls};
use coffer_broker::{
    audit::AuditLog,
    auth::config::AuthConfig,
    policy::Policy,
    server::{self, ListenAddr},
    service::{AckLimits, Broker, Limits},
    store::{SecretStore, dev::DevStore},
};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// Exit status for invalid configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "coffer-broker", version, about = "The Coffer secrets broker")]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "COFFER_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: Format,
    /// Log filter: a level (error, warn, info, debug, trace) or RUST_LOG-style
    /// directives such as `info,coffer_broker::auth=debug`. Replaces RUST_LOG
    /// when given; without either, `info`.
    #[arg(long, global = true, env = "COFFER_LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the broker.
    Serve(Box<ServeArgs>),
    /// Run a broker on the embedded dev store plus a sidecar writing to /dev/shm.
    Dev(dev::DevArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
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
    /// Overrides the config's Vault address.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        Format::Plain => LogFormat::Plain,
        Format::Json => LogFormat::Json,
    };
    if let Err(error) = init_tracing_with_level(format, cli.log_level.as_deref()) {
        eprintln!("coffer-broker: {error}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Dev(args) => dev::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "coffer-broker failed");
            if error.is::<UsageError>() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A configuration mistake: exits with EX_USAGE.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.max_watches_per_pod == 0
        || args.max_watches_per_account == 0
        || args.max_watches == Some(0)
    {
        return Err(usage(
            "--max-watches-per-pod, --max-watches-per-account and --max-watches must be at least 1",
        ));
    }
    // The certificate is read now and again whenever its files change
    // (cert-manager renews it in place): new connections get the new one.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ReloadingCert::load(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("loading the TLS certificate")?,
        ),
        _ => None,
    };
    if tls.is_none() && !args.listen.is_local() && !args.insecure {
        return Err(usage(
            "refusing plaintext on a non-loopback address: give --tls-cert/--tls-key, or --insecure",
        ));
    }

    let auth_config = match (&args.auth_config, &args.jwks, &args.issuer) {
        (Some(file), _, _) => AuthConfig::load(file).map_err(|e| usage(e.to_string()))?,
        (None, Some(jwks), Some(issuer)) => AuthConfig::single_jwks_file(
            jwks.clone(),
            issuer.clone(),
            args.audience.clone(),
            Duration::from_secs(args.leeway),
        ),
        _ => return Err(usage("give --auth-config, or --jwks with --issuer")),
    };
    let authn = auth_config
        .build()
        .await
        .map_err(|e| usage(e.to_string()))?;
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding metrics on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        tokio::spawn(coffer_broker::metrics::serve(listener, shutdown_signal()));
    }

    let policy_text = std::fs::read(&args.policy).map_err(|e| {
        usage(format!(
            "cannot read policy file {}: {e}",
            args.policy.display()
        ))
    })?;
    let policy = std::str::from_utf8(&policy_text)
        .map_err(|_| usage(format!("{} is not UTF-8", args.policy.display())))
        .and_then(|text| {
            Policy::from_yaml(text).map_err(|e| usage(format!("{}: {e}", args.policy.display())))
        })?;
    policy
        .check_issuers(&coffer_broker::auth::Authenticator::issuers(&*authn))
        .map_err(|e| usage(format!("{}: {e}", args.policy.display())))?;
    for warning in policy.warnings() {
        tracing::warn!(%warning, "policy warning");
    }
    let audit = match &args.audit_file {
        None => None,
        Some(path) => Some(open_audit(&args, path)?.fail_open(args.audit_fail_open)),
    };
    let store: Arc<dyn SecretStore> = match &args.dev_store_file {
        _ if args.store == StoreKind::Vault => {
            let store = vault_store(&args, &auth_config).await?;
            tracing::info!(store = "vault", "serving secrets from Vault/OpenBao");
            store
        }
        None => {
            tracing::warn!(
                store = "dev",
                persistent = false,
                "NOT FOR PRODUCTION: serving the in-memory dev store; every secret \
                 is lost when the broker stops, and replicas do not share it \
                 (use --store vault, or --dev-store-file to persist)"
            );
            Arc::new(DevStore::in_memory())
        }
        Some(file) => {
            tracing::warn!(
                store = "dev",
                persistent = true,
                file = %file.display(),
                "NOT FOR PRODUCTION: serving the dev store from a sealed file \
                 (one broker only; use --store vault in production)"
            );
            let material = match &args.dev_store_key_file {
                Some(path) => zeroize::Zeroizing::new(
                    std::fs::read(path)
                        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?,
                ),
                None => zeroize::Zeroizing::new(
                    std::env::var(coffer_broker::store::dev::KEY_ENV)
                        .map_err(|_| {
                            usage(
                                "the dev store needs --dev-store-key-file or COFFER_DEV_STORE_KEY",
                            )
                        })?
                        .into_bytes(),
                ),
            };
            let key = coffer_broker::store::dev::parse_key(&material)
                .map_err(|e| usage(e.to_string()))?;
            Arc::new(DevStore::persistent(file, &key)?)
        }
    };
    let mut broker = Broker::new(authn, policy, store)
        .with_limits(Limits {
            watches_per_pod: args.max_watches_per_pod,
            watches_per_account: args.max_watches_per_account,
            max_watches: max_watches(args.max_watches),
            requests_per_connection: args.max_requests_per_connection,
        })
        .with_ack_limits(AckLimits {
            ttl: args.ack_ttl,
            ..AckLimits::default()
        });
    if let Some(audit) = audit {
        broker = broker.with_audit(audit);
    }
    let peer_ca = match &args.peer_ca_file {
        Some(file) => {
            Some(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?)
        }
        None => None,
    };
    let peers = coffer_broker::peers::Peers::new(coffer_broker::peers::PeerConfig {
        urls: args.peers.clone(),
        token_file: args.peer_token_file.clone(),
        ca_pem: peer_ca,
        identities: args.peer_identities.clone(),
        issuers: broker.issuers(),
    })
    .await
    .map_err(|e| usage(e.to_string()))?;
    broker = broker.with_peers(peers);
    if !args.policy_reload_interval.is_zero() {
        coffer_broker::reload::spawn(
            broker.clone(),
            args.policy.clone(),
            args.policy_reload_interval,
            coffer_broker::reload::fingerprint(&policy_text),
        );
    }
    if let Some(tls) = &tls
        && !args.tls_reload_interval.is_zero()
    {
        tls.spawn_reloader(args.tls_reload_interval, broker.shutdown_token());
    }
    let at_shutdown = broker.clone();
    let served = run_listener(
        broker,
        tls,
        &args.listen,
        args.addr_file.as_deref(),
        shutdown_signal(),
    )
    .await;
    at_shutdown.flush_audit().await;
    served
}

/// The process-wide bound on watch streams: `--max-watches`, else sized
/// from the cgroup memory limit, else the documented default; logged with
/// where it came from.
fn max_watches(flag: Option<usize>) -> usize {
    use coffer_broker::service::{cgroup_memory_limit, max_watches_for_memory};
    let (max, from, memory_limit) = match (flag, cgroup_memory_limit()) {
        (Some(max), limit) => (max, "--max-watches", limit),
        (None, Some(limit)) => (
            max_watches_for_memory(Some(limit)),
            "cgroup memory limit",
            Some(limit),
        ),
        (None, None) => (
            max_watches_for_memory(None),
            "default (no memory limit)",
            None,
        ),
    };
    tracing::info!(max_watches = max, from, memory_limit, "watch bound");
    max
}

/// Opens the audit trail at `path` (`-`: stdout) as the flags say.
fn open_audit(args: &ServeArgs, path: &std::path::Path) -> anyhow::Result<AuditLog> {
    use coffer_broker::audit::{AuditOptions, AuditSink};
    let sink = if path.as_os_str() == "-" {
        AuditSink::Stdout
    } else {
        AuditSink::File(path.to_path_buf())
    };
    let hmac_key = match &args.audit_hmac_key_file {
        None => None,
        Some(file) => {
            let key = zeroize::Zeroizing::new(
                std::fs::read(file)
                    .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?,
            );
            if key.is_empty() {
                return Err(usage(format!("{} is empty", file.display())));
            }
            Some(key)
        }
    };
    let options = AuditOptions {
        max_bytes: args.audit_max_bytes,
        keep: args.audit_keep,
        hmac_key,
        aggregate_interval: args.audit_aggregate_interval,
        head_interval: Some(args.audit_head_interval).filter(|d| !d.is_zero()),
        ..AuditOptions::new(sink)
    };
    AuditLog::open(options).map_err(|e| usage(e.to_string()))
}

async fn vault_store(args: &ServeArgs, auth: &AuthConfig) -> anyhow::Result<Arc<dyn SecretStore>> {
    use coffer_broker::store::vault::{VaultConfig, VaultStore};
    let file = args
        .vault_config
        .as_ref()
        .ok_or_else(|| usage("--store vault needs --vault-config"))?;
    let mut config = VaultConfig::load(file).map_err(|e| usage(e.to_string()))?;
    if let Some(addr) = &args.vault_addr {
        config.address.clone_from(addr);
    }
    if let Some(ca) = &args.vault_ca_file {
        config.ca_file = Some(ca.clone());
    }
    if let Some(id) = &args.replica_id {
        config.replica_id.clone_from(id);
    }
    config.validate().map_err(|e| usage(e.to_string()))?;
    // Certificates name the caller's trust domain, which follows its issuer.
    config
        .resolve_trust_domains(&auth.trust_domains())
        .map_err(|e| usage(e.to_string()))?;
    // Vault may start after the broker (any order in a cluster): the first
    // login is retried in the background while health says NOT_SERVING.
    let store = VaultStore::start(config)
        .await
        .map_err(|e| usage(e.to_string()))?;
    Ok(Arc::new(store))
}

/// Binds `listen`, reports the bound address, and serves until `shutdown`.
async fn run_listener(
    broker: Broker,
    tls: Option<Arc<ReloadingCert>>,
    listen: &ListenAddr,
    addr_file: Option<&std::path::Path>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    match listen {
        ListenAddr::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let bound = listener.local_addr()?;
            announce(&bound.to_string(), addr_file)?;
            // Accepted sockets do not inherit TCP_NODELAY: without it a watch
            // update can sit ~40 ms in Nagle's buffer waiting for a delayed ACK.
            let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |s| {
                if let Ok(stream) = &s {
                    let _ = stream.set_nodelay(true);
                }
                s
            });
            match tls {
                Some(tls) => {
                    let incoming = serve_tls(incoming, tls.server_config(&[b"h2"])?);
                    server::serve(broker, None, incoming, shutdown).await?;
                }
                None => server::serve(broker, None, incoming, shutdown).await?,
            }
        }
        ListenAddr::Unix(path) => {
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                std::fs::remove_file(path)?;
            }
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("binding {}", path.display()))?;
            announce(&format!("unix:{}", path.display()), addr_file)?;
            let incoming = UnixListenerStream::new(listener);
            match tls {
                Some(tls) => {
                    let incoming = serve_tls(incoming, tls.server_config(&[b"h2"])?);
                    server::serve(broker, None, incoming, shutdown).await?;
                }
                None => server::serve(broker, None, incoming, shutdown).await?,
            }
            let _ = std::fs::remove_file(path);
        }
    }
    tracing::info!("broker stopped");
    Ok(())
}

fn announce(addr: &str, addr_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    tracing::info!(addr, "broker listening");
    if let Some(file) = addr_file {
        // Write then rename, so a reader never sees a partial address.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, addr)?;
        std::fs::rename(&tmp, file)?;
    }
    Ok(())
}
