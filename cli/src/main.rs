//! `cofferctl`: the operator's tool. This file starts it: parse the
//! command line, then run the command on a one-thread runtime started the
//! way every Coffer binary starts (`coffer_runtime::run_main`), a failure
//! printed and turned into its exit code by category ([`exit::code`]; the
//! table is in `--help` and docs/cli.md).

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
use coffer_runtime::{Main, run_main};

use crate::{args::Cli, output::Printer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Printer::new(cli.output);
    // No logging: cofferctl prints its results and its errors itself.
    let main = Main::new("cofferctl")
        .current_thread()
        .exit_code(exit::code);
    run_main(main, || cmd::run(cli.command, out, &cli.broker))
}
