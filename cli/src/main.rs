//! `cofferctl`: the operator's tool. This file starts it: parse the
//! command line, run the command on a small runtime, turn a failure into its
//! exit code ([`exit::EXIT_CODES`], also in `--help` and docs/cli.md).

mod args;
mod cmd;
mod connect;
mod console;
mod exit;
mod output;
mod status;
mod token;

use std::process::ExitCode;

use clap::Parser;

use crate::{args::Cli, output::Printer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Printer::new(cli.output);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cofferctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli.command, out, &cli.broker)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cofferctl: {e:#}");
            ExitCode::from(exit::code(&e))
        }
    }
}
