//! `coffer-broker`: serve secrets, or run the whole system locally (`dev`).
//!
//! The broker is the library's [`coffer_broker::app`]; this binary is its
//! flags (`args.rs`), the demo (`dev.rs`) and the exit status, through
//! [`coffer_runtime::run_main`]: 64 (`EX_USAGE`) for a configuration
//! mistake, 1 for any other failure.

mod args;
mod dev;

use std::process::ExitCode;

use clap::Parser;
use coffer_broker::app::{App, AppError};
use coffer_runtime::{Main, run_main, shutdown_signal, usage};

use args::{Cli, Command, ServeArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let main = Main::new("coffer-broker").logging(cli.log_format, cli.log_level);
    run_main(main, || async {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Dev(args) => dev::run(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    })
}

/// A broker's failure as the exit status sees it: a configuration mistake
/// is a usage error (64).
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
