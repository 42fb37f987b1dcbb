//! Building a broker: every file read and every setting checked, in the
//! order `coffer-broker serve` has always taken them, so that the first
//! mistake is the one reported.

use std::{path::Path, sync::Arc};

use zeroize::Zeroizing;

use super::{
    App, AppConfig, AppError, AuditSettings, AuthSource, DevKey, PeerSettings, PolicyReload,
    PolicySource, StoreSource, VaultSettings,
};
use crate::{
    audit::{AuditLog, AuditOptions, AuditSink},
    auth::{Authenticator, config::AuthConfig},
    peers::{PeerConfig, Peers},
    policy::Policy,
    service::{AckLimits, Broker, Limits, cgroup_memory_limit, max_watches_for_memory},
    store::{
        SecretStore,
        dev::{self, DevStore},
        vault::{VaultConfig, VaultStore},
    },
    tls::ReloadingCert,
};

/// Trust domains by issuer, as the Vault store's certificates name them.
type TrustDomains = Vec<(String, Option<String>)>;

impl App {
    /// Reads and checks everything `config` names and builds the broker.
    /// Nothing is bound and nothing served yet (see [`App::bind`] and
    /// [`App::run`]); background work that follows the store (a Vault
    /// login, lease renewals) has started.
    pub async fn build(config: AppConfig) -> Result<Self, AppError> {
        let limits = config.limits;
        if limits.watches_per_pod == 0
            || limits.watches_per_account == 0
            || limits.max_watches == Some(0)
        {
            return Err(AppError::usage(
                "--max-watches-per-pod, --max-watches-per-account and --max-watches must be at least 1",
            ));
        }
        // The certificate is read now and again whenever its files change
        // (cert-manager renews it in place): new connections get the new one.
        let tls = match config.tls {
            Some(tls) => Some((
                ReloadingCert::load(tls.files).map_err(AppError::LoadTls)?,
                tls.reload_interval,
            )),
            None => None,
        };
        if tls.is_none() && !config.listen.is_local() && !config.insecure {
            return Err(AppError::usage(
                "refusing plaintext on a non-loopback address: give --tls-cert/--tls-key, or --insecure",
            ));
        }
        let (authn, trust_domains) = authenticator(config.auth).await?;
        let (policy, policy_reload) = policy(config.policy, authn.as_ref())?;
        let audit = config.audit.map(open_audit).transpose()?;
        let store = store(config.store, &trust_domains).await?;
        let mut broker = Broker::new(authn, policy, store)
            .with_limits(Limits {
                watches_per_pod: limits.watches_per_pod,
                watches_per_account: limits.watches_per_account,
                max_watches: max_watches(limits.max_watches),
                requests_per_connection: limits.requests_per_connection,
            })
            .with_ack_limits(AckLimits {
                ttl: limits.ack_ttl,
                ..AckLimits::default()
            });
        if let Some(audit) = audit {
            broker = broker.with_audit(audit);
        }
        let peers = peers(config.peers, broker.issuers()).await?;
        Ok(Self {
            broker: broker.with_peers(peers),
            listen: config.listen,
            addr_file: config.addr_file,
            metrics_listen: config.metrics_listen,
            tls,
            policy_reload,
        })
    }
}

/// The authenticator, and the trust domains its config names.
async fn authenticator(
    source: AuthSource,
) -> Result<(Arc<dyn Authenticator>, TrustDomains), AppError> {
    let config = match source {
        AuthSource::Ready(authn) => return Ok((authn, Vec::new())),
        AuthSource::Config(config) => config,
        AuthSource::File(file) => {
            AuthConfig::load(&file).map_err(|e| AppError::usage(e.to_string()))?
        }
    };
    let authn = config
        .build()
        .await
        .map_err(|e| AppError::usage(e.to_string()))?;
    Ok((authn, config.trust_domains()))
}

/// The policy, checked against the trusted issuers, and what its reloader
/// needs: the file, how often, and the fingerprint of what is in force.
fn policy(
    source: PolicySource,
    authn: &dyn Authenticator,
) -> Result<(Policy, Option<PolicyReload>), AppError> {
    let (path, reload_interval) = match source {
        PolicySource::Fixed(policy) => return Ok((policy, None)),
        PolicySource::File {
            path,
            reload_interval,
        } => (path, reload_interval),
    };
    let shown = path.display();
    let text = std::fs::read(&path)
        .map_err(|e| AppError::usage(format!("cannot read policy file {shown}: {e}")))?;
    let policy = std::str::from_utf8(&text)
        .map_err(|_| AppError::usage(format!("{shown} is not UTF-8")))
        .and_then(|yaml| {
            Policy::from_yaml(yaml).map_err(|e| AppError::usage(format!("{shown}: {e}")))
        })?;
    policy
        .check_issuers(&authn.issuers())
        .map_err(|e| AppError::usage(format!("{shown}: {e}")))?;
    for warning in policy.warnings() {
        tracing::warn!(%warning, "policy warning");
    }
    let reload = (!reload_interval.is_zero()).then(|| PolicyReload {
        loaded: crate::reload::fingerprint(&text),
        path: path.clone(),
        interval: reload_interval,
    });
    Ok((policy, reload))
}

/// Opens the audit trail (`-`: stdout) as the settings say.
fn open_audit(settings: AuditSettings) -> Result<AuditLog, AppError> {
    let sink = if settings.path.as_os_str() == "-" {
        AuditSink::Stdout
    } else {
        AuditSink::File(settings.path)
    };
    let hmac_key = match &settings.hmac_key_file {
        None => None,
        Some(file) => {
            let key = read_secret(file)?;
            if key.is_empty() {
                return Err(AppError::usage(format!("{} is empty", file.display())));
            }
            Some(key)
        }
    };
    let options = AuditOptions {
        max_bytes: settings.max_bytes,
        keep: settings.keep,
        hmac_key,
        aggregate_interval: settings.aggregate_interval,
        head_interval: Some(settings.head_interval).filter(|d| !d.is_zero()),
        ..AuditOptions::new(sink)
    };
    let log = AuditLog::open(options).map_err(|e| AppError::usage(e.to_string()))?;
    Ok(log.fail_open(settings.fail_open))
}

/// A key file's bytes, wiped when dropped.
fn read_secret(file: &Path) -> Result<Zeroizing<Vec<u8>>, AppError> {
    std::fs::read(file)
        .map(Zeroizing::new)
        .map_err(|e| AppError::usage(format!("cannot read {}: {e}", file.display())))
}

async fn store(
    source: StoreSource,
    trust_domains: &TrustDomains,
) -> Result<Arc<dyn SecretStore>, AppError> {
    match source {
        StoreSource::Ready(store) => Ok(store),
        StoreSource::Vault(settings) => {
            let store = vault_store(settings, trust_domains).await?;
            tracing::info!(store = "vault", "serving secrets from Vault/OpenBao");
            Ok(store)
        }
        StoreSource::DevMemory => {
            tracing::warn!(
                store = "dev",
                persistent = false,
                "NOT FOR PRODUCTION: serving the in-memory dev store; every secret \
                 is lost when the broker stops, and replicas do not share it \
                 (use --store vault, or --dev-store-file to persist)"
            );
            Ok(Arc::new(DevStore::in_memory()))
        }
        StoreSource::DevFile { file, key } => {
            tracing::warn!(
                store = "dev",
                persistent = true,
                file = %file.display(),
                "NOT FOR PRODUCTION: serving the dev store from a sealed file \
                 (one broker only; use --store vault in production)"
            );
            let material = match key {
                Some(DevKey::File(path)) => read_secret(&path)?,
                Some(DevKey::Material(material)) => material,
                None => {
                    return Err(AppError::usage(
                        "the dev store needs --dev-store-key-file or COFFER_DEV_STORE_KEY",
                    ));
                }
            };
            let key = dev::parse_key(&material).map_err(|e| AppError::usage(e.to_string()))?;
            Ok(Arc::new(DevStore::persistent(file, &key)?))
        }
    }
}

async fn vault_store(
    settings: VaultSettings,
    trust_domains: &TrustDomains,
) -> Result<Arc<dyn SecretStore>, AppError> {
    let file = settings
        .config
        .ok_or_else(|| AppError::usage("--store vault needs --vault-config"))?;
    let mut config = VaultConfig::load(&file).map_err(|e| AppError::usage(e.to_string()))?;
    if let Some(addr) = settings.addr {
        config.set_address(addr);
    }
    if let Some(ca) = settings.ca_file {
        config.ca_file = Some(ca);
    }
    if let Some(id) = settings.replica_id {
        config.replica_id = id;
    }
    config
        .validate()
        .map_err(|e| AppError::usage(e.to_string()))?;
    // Certificates name the caller's trust domain, which follows its issuer.
    config
        .resolve_trust_domains(trust_domains)
        .map_err(|e| AppError::usage(e.to_string()))?;
    // Vault may start after the broker (any order in a cluster): the first
    // login is retried in the background while health says NOT_SERVING.
    let store = VaultStore::start(config)
        .await
        .map_err(|e| AppError::usage(e.to_string()))?;
    Ok(Arc::new(store))
}

/// The process-wide bound on watch streams: `--max-watches`, else sized
/// from the cgroup memory limit, else the documented default; logged with
/// where it came from.
fn max_watches(flag: Option<usize>) -> usize {
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

async fn peers(settings: PeerSettings, issuers: Vec<String>) -> Result<Peers, AppError> {
    let ca_pem = match &settings.ca_file {
        Some(file) => Some(std::fs::read(file).map_err(|source| AppError::Read {
            path: file.display().to_string(),
            source,
        })?),
        None => None,
    };
    Peers::new(PeerConfig {
        urls: settings.urls,
        token_file: settings.token_file,
        ca_pem,
        identities: settings.identities,
        issuers,
    })
    .await
    .map_err(|e| AppError::usage(e.to_string()))
}
