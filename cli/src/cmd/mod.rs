//! One room per command (or family of commands); [`run`] sends a parsed
//! command to its room. The rooms that talk to the broker take their
//! connection flags already merged with those given before the subcommand.

mod audit;
mod get;
mod leases;
mod migrate;
mod policy;
mod put;
mod rollout;
mod versions;

use std::process::ExitCode;

use clap::CommandFactory;

use crate::{
    args::{BrokerArgs, Cli, Command, TokenCommand},
    connect, console,
    output::Printer,
    token,
};

/// Runs `command`, printing through `out`; `leading` are the connection
/// flags given before the subcommand.
pub(crate) async fn run(
    command: Command,
    out: Printer,
    leading: &BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let merged = |broker: BrokerArgs| broker.or(leading);
    match command {
        Command::Put(mut args) => {
            args.broker = merged(args.broker);
            put::run(out, args).await
        }
        Command::Rotate(mut args) => {
            args.broker = merged(args.broker);
            rollout::rotate(out, args).await
        }
        Command::Get(mut args) => {
            args.broker = merged(args.broker);
            get::run(out, args).await
        }
        Command::Status { path, broker } => rollout::status(out, path, merged(broker)).await,
        Command::Versions { path, broker } => versions::list(out, path, merged(broker)).await,
        Command::Delete {
            path,
            versions,
            broker,
        } => {
            let action = coffer::operator::VersionAction::Delete;
            versions::change(out, &merged(broker), action, &path, versions, "deleted").await
        }
        Command::Undelete {
            path,
            versions,
            broker,
        } => {
            let action = coffer::operator::VersionAction::Undelete;
            versions::change(out, &merged(broker), action, &path, versions, "undeleted").await
        }
        Command::Destroy {
            path,
            versions,
            broker,
        } => {
            let action = coffer::operator::VersionAction::Destroy;
            versions::change(out, &merged(broker), action, &path, versions, "destroyed").await
        }
        Command::Rollback {
            path,
            to_version,
            broker,
        } => versions::rollback(out, path, to_version, merged(broker)).await,
        Command::List { folder, broker } => versions::secrets(out, folder, merged(broker)).await,
        Command::Leases { path, broker } => leases::list(out, path, merged(broker)).await,
        Command::Revoke { lease_id, broker } => leases::revoke(out, lease_id, merged(broker)).await,
        Command::Console { broker, args } => {
            let client = connect::connect(&merged(broker)).await?;
            console::run(out, client, args).await
        }
        Command::Token {
            command:
                TokenCommand::Verify {
                    jwks,
                    issuer,
                    audience,
                    leeway,
                },
        } => Ok(token::verify(out, &jwks, issuer, audience, leeway)),
        Command::Policy { command } => Ok(policy::run(out, command)),
        Command::Migrate { file, check } => migrate::run(&file, check),
        Command::Audit { command } => Ok(audit::run(out, command)),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "cofferctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
