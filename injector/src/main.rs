//! `coffer-injector`: the mutating admission webhook (see the library docs).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use coffer_injector::{
    access::{AllowList, Cidr},
    annotations::Layout,
    mode::SidecarMode,
    patch::{DEFAULT_EXCLUDED_NAMESPACES, Injection},
    server,
};
use coffer_runtime::{EX_USAGE, LogFormat, Main, run_main, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "coffer-injector",
    version,
    about = "Adds the Coffer sidecar to pods that opt in"
)]
struct Cli {
    /// Listen address (HTTPS: /mutate, /healthz, /readyz).
    #[arg(long, env = "COFFER_INJECTOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// Write the bound address here once listening (useful with port 0).
    #[arg(long, env = "COFFER_ADDR_FILE")]
    addr_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) the API server verifies (caBundle).
    #[arg(long, env = "COFFER_TLS_CERT")]
    tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, env = "COFFER_TLS_KEY")]
    tls_key: PathBuf,
    /// How often the certificate and key files are checked for a renewal
    /// (cert-manager replaces them; 0s: never). New connections get the new
    /// pair, open ones keep theirs; a pair that does not load keeps the last
    /// good one (logged).
    #[arg(long, env = "COFFER_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    tls_reload_interval: std::time::Duration,
    /// The sidecar image to inject.
    #[arg(long, env = "COFFER_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// The broker URL the sidecars use.
    #[arg(
        long,
        env = "COFFER_BROKER",
        default_value = "https://coffer-broker.coffer.svc:8443"
    )]
    broker: String,
    /// The ConfigMap, in each pod's namespace, holding the broker's CA (`ca.crt`).
    #[arg(long, env = "COFFER_CA_CONFIG_MAP", default_value = "coffer-ca")]
    ca_config_map: String,
    /// Where app containers see the secret files.
    #[arg(long, env = "COFFER_SECRETS_DIR", default_value = "/coffer/secrets")]
    secrets_dir: String,
    /// How the sidecar is added, unless a pod's `coffer.dev/sidecar-mode`
    /// annotation says otherwise: `native` (an init container with
    /// restartPolicy Always; Kubernetes 1.29+), `container` (a `--once` init
    /// container plus an ordinary sidecar container; any version) or
    /// `init-only` (the `--once` init container alone: no rotation).
    #[arg(
        long,
        env = "COFFER_INJECTOR_SIDECAR_MODE",
        value_enum,
        default_value_t = Mode::Native
    )]
    sidecar_mode: Mode,
    /// A namespace whose pods are never mutated (allowed unchanged). Repeat
    /// it or give a comma-separated list; any value replaces the whole
    /// default list, and an empty value excludes nothing.
    #[arg(
        long,
        env = "COFFER_INJECTOR_EXCLUDE_NAMESPACES",
        value_name = "NAMESPACE",
        value_delimiter = ',',
        default_values = DEFAULT_EXCLUDED_NAMESPACES
    )]
    exclude_namespace: Vec<String>,
    /// An address range that may connect (e.g. the control plane's and the
    /// nodes': the API server calls /mutate, the kubelet probes /healthz).
    /// Repeat it or give a comma-separated list; other addresses are
    /// turned away before the TLS handshake. None (the default, or an empty
    /// value) admits every address.
    #[arg(
        long,
        env = "COFFER_INJECTOR_ALLOW_CIDRS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    allow_cidr: Vec<String>,
    /// Log format.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "plain")]
    log_format: LogFormat,
}

/// The flag's spelling of [`SidecarMode`] (the library knows no clap).
#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Container,
    InitOnly,
}

impl From<Mode> for SidecarMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Native => Self::Native,
            Mode::Container => Self::Container,
            Mode::InitOnly => Self::InitOnly,
        }
    }
}

/// A namespace name as Kubernetes allows it (an RFC 1123 label): a typo such
/// as `Kube-System` would otherwise exclude nothing, silently.
fn is_namespace_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let main = Main::new("coffer-injector").logging(cli.log_format, None);
    run_main(main, || run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !cli.secrets_dir.starts_with('/') || cli.secrets_dir.contains("..") {
        tracing::error!(dir = %cli.secrets_dir, "--secrets-dir must be an absolute path");
        return Ok(ExitCode::from(EX_USAGE));
    }
    let excluded_namespaces = cli
        .exclude_namespace
        .iter()
        .map(|name| name.trim())
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>();
    if let Some(bad) = excluded_namespaces.iter().find(|n| !is_namespace_name(n)) {
        tracing::error!(namespace = %bad, "--exclude-namespace: not a namespace name");
        return Ok(ExitCode::from(EX_USAGE));
    }
    let mut allowed = AllowList::default();
    for text in cli
        .allow_cidr
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
    {
        match text.parse::<Cidr>() {
            Ok(cidr) => allowed.0.push(cidr),
            Err(error) => {
                tracing::error!(%error, "--allow-cidr: not an address range");
                return Ok(ExitCode::from(EX_USAGE));
            }
        }
    }
    let certificate = match coffer_tls::ReloadingCert::load(coffer_tls::CertFiles {
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
    }) {
        Ok(certificate) => certificate,
        Err(error) => {
            tracing::error!(%error, "invalid TLS configuration");
            return Ok(ExitCode::from(EX_USAGE));
        }
    };
    let tls = match certificate.server_config(&[b"http/1.1"]) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "invalid TLS configuration");
            return Ok(ExitCode::from(EX_USAGE));
        }
    };
    let injection = Injection {
        image: cli.sidecar_image,
        ca_config_map: cli.ca_config_map,
        layout: Layout {
            broker: cli.broker,
            output_dir: cli.secrets_dir,
            token_file: "/var/run/secrets/coffer/token".into(),
            ca_file: "/etc/coffer/ca/ca.crt".into(),
            admin_listen: "0.0.0.0:8099".into(),
        },
        mode: cli.sidecar_mode.into(),
        excluded_namespaces,
    };
    let listener = server::bind(cli.listen).with_context(|| format!("binding {}", cli.listen))?;
    let bound = listener.local_addr()?;
    tracing::info!(
        addr = %bound,
        sidecar_mode = %injection.mode,
        excluded_namespaces = ?injection.excluded_namespaces,
        allowed = %if allowed.0.is_empty() {
            "any address".to_string()
        } else {
            allowed.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        },
        "injector listening"
    );
    if let Some(file) = &cli.addr_file {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string())?;
        std::fs::rename(&tmp, file)?;
    }
    let stop_reloading = tokio_util::sync::CancellationToken::new();
    if !cli.tls_reload_interval.is_zero() {
        certificate.spawn_reloader(cli.tls_reload_interval, stop_reloading.clone());
    }
    server::serve(listener, tls, injection, allowed, shutdown_signal()).await;
    stop_reloading.cancel();
    Ok(ExitCode::SUCCESS)
}
