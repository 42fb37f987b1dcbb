//! `coffer-env`: resolves `coffer:` references in environment variables,
//! then `exec`s the app, or with `--restart-on-change` stays as its parent
//! and restarts it when a referenced secret changes.
//!
//! ```text
//! DB_PASSWORD=coffer:shop/db#password coffer-env -- /app/server --port 8080
//! ```
//!
//! The rooms: [`reference`] (which variables are references: the syntax),
//! [`resolve`] (fetching, all or nothing, and the app's environment),
//! [`supervise`] (the parent that restarts, forwards signals and reaps),
//! [`install`] (the init container's copy of this binary). docs/env.md is
//! the user's guide.

pub mod install;
pub mod reference;
pub mod resolve;
pub mod supervise;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use coffer::{Client, RetryPolicy, TokenSource};
use coffer_runtime::usage;

use crate::{
    reference::Plan,
    resolve::{build, fetch},
};

/// What `coffer-env` runs with (its flags, or the same environment
/// variables the sidecar and the SDK read).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker endpoint (`COFFER_BROKER`).
    pub broker: Option<String>,
    /// The broker's CA bundle (`COFFER_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// The token file (`COFFER_TOKEN_FILE`; default: the projected token).
    pub token_file: Option<PathBuf>,
    /// The TLS name to verify (`COFFER_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
    /// How long to keep trying to fetch before giving up.
    pub timeout: Duration,
    /// Stay as the parent and restart the app on change.
    pub restart_on_change: Option<supervise::Options>,
    /// The app and its arguments.
    pub command: Vec<OsString>,
}

/// Resolves the process's environment and runs the app: `exec`s it, or
/// supervises it. Returns only on failure, or with the app's status when
/// supervising.
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let plan = Plan::parse(std::env::vars_os()).map_err(|e| usage(e.to_string()))?;
    if settings.command.is_empty() {
        return Err(usage(
            "no app to run: coffer-env [OPTIONS] -- APP [ARGS]...",
        ));
    }
    let client = match plan.paths().is_empty() {
        true => None,
        false => Some(client(&settings).await?),
    };
    let secrets = match &client {
        Some(client) => fetch(client, &plan, settings.timeout).await?,
        None => Default::default(),
    };
    if let Some(options) = settings.restart_on_change {
        return supervise::supervise(client, plan, settings.command, secrets, options).await;
    }
    let env = build(&plan, |p| secrets.get(p).map(coffer::Secret::data))?;
    drop(secrets);
    tracing::debug!(resolved = env.resolved(), "environment resolved; exec");
    let (program, args) = settings
        .command
        .split_first()
        .ok_or_else(|| usage("no app to run"))?;
    let mut command = Command::new(program);
    command.args(args);
    env.apply(&mut command);
    drop(env);
    // Only returns on failure; on success the app is this process.
    let error = command.exec();
    tracing::error!(program = %program.to_string_lossy(), %error, "cannot run the app");
    Ok(ExitCode::from(exec_failure_status(&error)))
}

/// The status a shell gives a command it cannot run: 127 when not found,
/// 126 otherwise.
pub fn exec_failure_status(error: &std::io::Error) -> u8 {
    if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

async fn client(settings: &Settings) -> anyhow::Result<Client> {
    let broker = settings
        .broker
        .as_deref()
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| {
            usage(format!(
                "{} is not set (the broker's endpoint, e.g. https://coffer-broker.coffer.svc:8443) and variables hold coffer: references",
                coffer::env::BROKER
            ))
        })?;
    let token = settings
        .token_file
        .clone()
        .unwrap_or_else(|| TokenSource::PROJECTED_PATH.into());
    let mut builder = Client::builder(broker.trim())
        .token(TokenSource::file(token))
        .retry(RetryPolicy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    if let Some(ca) = &settings.ca_file {
        builder = builder.ca_file(ca);
    }
    if let Some(name) = &settings.tls_server_name {
        builder = builder.tls_server_name(name);
    }
    Ok(builder.connect_lazy().await?)
}
