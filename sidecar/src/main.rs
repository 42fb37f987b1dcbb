//! `coffer-sidecar`: write a pod's secrets to tmpfs and keep them current.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use coffer_runtime::{EX_USAGE, LogFormat, Main, run_main, shutdown_signal};
use coffer_sidecar::{
    Sidecar,
    admin::{self, AdminState},
    config::{Config, ProcessEnv},
    run::{file_exists, harden_process},
};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(
    name = "coffer-sidecar",
    version,
    about = "Writes a pod's secrets to tmpfs and keeps them current"
)]
struct Cli {
    /// The configuration file (YAML).
    #[arg(long, env = "COFFER_SIDECAR_CONFIG")]
    config: PathBuf,
    /// Write every secret once and exit (for init containers).
    #[arg(long)]
    once: bool,
    /// With --once: how long to keep retrying before giving up, in seconds.
    #[arg(long, default_value_t = 60)]
    once_timeout: u64,
    /// Allow an output directory that is not tmpfs. Secrets will touch a disk.
    #[arg(long)]
    allow_non_tmpfs: bool,
    /// Exit 0 once this file exists (e.g. a Job's main container creates it
    /// when done). Overrides `exitWhenFileExists` / COFFER_EXIT_WHEN_FILE_EXISTS.
    #[arg(long, value_name = "PATH")]
    exit_when_file_exists: Option<PathBuf>,
    /// Parse and validate the configuration, then exit: 0 when valid, 64
    /// (EX_USAGE) when not. Contacts nothing and writes nothing.
    #[arg(long, conflicts_with = "once")]
    check_config: bool,
    /// Log format.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "plain")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let main = Main::new("coffer-sidecar")
        .current_thread()
        .logging(cli.log_format, None);
    run_main(main, || run(cli))
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    harden_process();
    let mut config = match Config::load(&cli.config, &ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return Ok(ExitCode::from(EX_USAGE));
        }
    };
    config.allow_non_tmpfs |= cli.allow_non_tmpfs;
    if let Some(path) = cli.exit_when_file_exists.take() {
        config.exit_when_file_exists = Some(path);
    }
    if cli.check_config {
        tracing::info!(
            config = %cli.config.display(),
            secrets = config.secrets.len(),
            proxies = config.proxies.len(),
            "configuration valid"
        );
        return Ok(ExitCode::SUCCESS);
    }

    let admin_listen = config.admin_listen.clone();
    let quit_listen = config.quit_listen.clone();
    let exit_file = config.exit_when_file_exists.clone();
    let proxies = config.proxies.clone();
    let mut sidecar = Sidecar::new(config).await?;
    if cli.once {
        sidecar
            .run_once(Duration::from_secs(cli.once_timeout))
            .await?;
        tracing::info!("sidecar finished");
        return Ok(ExitCode::SUCCESS);
    }
    sidecar.start_actions(Duration::from_secs(1));
    coffer_sidecar::proxy::spawn_all(&proxies, sidecar.credentials())
        .await
        .map_err(|e| anyhow::anyhow!("cannot start a proxy: {e}"))?;
    let quit = Arc::new(Notify::new());
    // The probe port never quits; the quit port is loopback-only (the
    // configuration admits nothing else there).
    let endpoints = [
        (admin_listen, "admin", None),
        (quit_listen, "quit", Some(quit.clone())),
    ];
    for (addr, name, quit) in endpoints {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the {name} endpoint {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "{name} endpoint listening");
        let state = AdminState {
            ready: sidecar.ready(),
            quit,
        };
        tokio::spawn(admin::serve(listener, state, std::future::pending()));
    }
    let stop = async move {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = quit.notified() => {}
            _ = async {
                match exit_file {
                    Some(path) => file_exists(path).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    };
    sidecar.run(stop).await?;
    tracing::info!("sidecar finished");
    Ok(ExitCode::SUCCESS)
}
