//! `coffer-env`: resolve `coffer:` references in the environment, then run
//! the app (docs/env.md).

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use coffer_env::{Settings, install::install, supervise};
use coffer_runtime::{EX_USAGE, LogFormat, Main, run_main};

#[derive(Parser)]
#[command(
    name = "coffer-env",
    version,
    about = "Resolves coffer: references in environment variables, then runs the app",
    after_help = "DB_PASSWORD=coffer:shop/db#password coffer-env -- /app/server\n\
                  Whole maps, escapes and the trade-offs: docs/env.md"
)]
struct Cli {
    /// Stay as the app's parent: watch the referenced secrets and restart
    /// the app (SIGTERM, grace period, SIGKILL) with the new values.
    #[arg(long)]
    restart_on_change: bool,
    /// With --restart-on-change: how long the app has to exit after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "COFFER_ENV_GRACE_PERIOD")]
    grace_period: Duration,
    /// With --restart-on-change: how long the versions must stay still
    /// before a restart, so a burst of rotations restarts once.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "COFFER_ENV_DEBOUNCE")]
    debounce: Duration,
    /// How long to keep trying an unreachable broker before giving up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "COFFER_ENV_TIMEOUT")]
    timeout: Duration,
    /// The broker: https://host:port, http://127.0.0.1:port or unix:/path.
    #[arg(long, env = "COFFER_BROKER")]
    broker: Option<String>,
    /// The broker's CA bundle (PEM).
    #[arg(long, env = "COFFER_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The projected token [default: /var/run/secrets/coffer/token].
    #[arg(long, env = "COFFER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The name the broker's certificate must carry, if not the host's.
    #[arg(long, env = "COFFER_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Copy this binary into DIR and exit (the injected init container).
    #[arg(long, value_name = "DIR", conflicts_with = "command")]
    install: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "plain")]
    log_format: LogFormat,
    /// Log level (not RUST_LOG, which is the app's).
    #[arg(long, env = "COFFER_ENV_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// The app and its arguments, after `--`.
    #[arg(last = true, value_name = "APP")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.install {
        return match install(dir) {
            Ok(path) => {
                eprintln!("coffer-env: installed {}", path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("coffer-env: cannot install into {}: {error}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if cli.command.is_empty() {
        eprintln!("coffer-env: no app to run: coffer-env [OPTIONS] -- APP [ARGS]...");
        return ExitCode::from(EX_USAGE);
    }
    let main = Main::new("coffer-env")
        .current_thread()
        .logging(cli.log_format, Some(cli.log_level.clone()));
    let settings = Settings {
        broker: cli.broker,
        ca_file: cli.ca_file,
        token_file: cli.token_file,
        tls_server_name: cli.tls_server_name,
        timeout: cli.timeout,
        restart_on_change: cli.restart_on_change.then_some(supervise::Options {
            grace: cli.grace_period,
            debounce: cli.debounce,
        }),
        command: cli.command,
    };
    run_main(main, || coffer_env::run(settings))
}
