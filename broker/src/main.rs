//! `coffer-broker`: serve secrets, or run the whole system locally (`dev`).
//!
//! The broker is the library's [`coffer_broker::app`]; this binary is its
//! flags (`args.rs`), the demo (`dev.rs`) and the exit status: 64
//! (`EX_USAGE`) for a configuration mistake, 1 for any other failure.

mod args;
mod dev;

use std::process::ExitCode;

use clap::Parser;
use coffer::cli::{LogFormat, init_tracing_with_level, shutdown_signal};
use coffer_broker::app::{App, AppError};

use args::{Cli, Command, Format, ServeArgs};

/// Exit status for invalid configuration (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;

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

/// A broker's failure as the exit status sees it.
fn failed(error: AppError) -> anyhow::Error {
    match error {
        AppError::Usage(message) => usage(message),
        other => other.into(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let app = App::build(args.into_config()?).await.map_err(failed)?;
    let listeners = app.bind().await.map_err(failed)?;
    app.run(listeners, shutdown_signal()).await.map_err(failed)
}
