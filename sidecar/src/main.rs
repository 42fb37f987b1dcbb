//! `coffer-sidecar`: write a pod's secrets to tmpfs and keep them current.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use coffer::cli::{LogFormat, init_tracing, shutdown_signal};
use coffer_sidecar::{
    Sidecar,
    config::{Config, ProcessEnv},
    run::harden_process,
};

/// Exit status for invalid configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

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
    /// Log format.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "plain")]
    log_format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Plain,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(match cli.log_format {
        Format::Plain => LogFormat::Plain,
        Format::Json => LogFormat::Json,
    });
    harden_process();

    let mut config = match Config::load(&cli.config, &ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return ExitCode::from(EX_USAGE);
        }
    };
    config.allow_non_tmpfs |= cli.allow_non_tmpfs;

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut sidecar = Sidecar::new(config).await?;
        if cli.once {
            sidecar
                .run_once(Duration::from_secs(cli.once_timeout))
                .await
        } else {
            sidecar.run(shutdown_signal()).await
        }
    });
    match result {
        Ok(()) => {
            tracing::info!("sidecar finished");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "sidecar failed");
            ExitCode::FAILURE
        }
    }
}
