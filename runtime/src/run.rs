//! How a Coffer binary starts and ends: logging, the tokio runtime, and the
//! exit status of a failure.

use std::{future::Future, process::ExitCode};

use crate::{EX_USAGE, LogFormat, UsageError, init_logging};

/// How [`run_main`] starts a binary: its name (for messages), the runtime's
/// flavour, whether it logs, and how a failure becomes an exit status.
#[derive(Debug, Clone)]
pub struct Main {
    name: &'static str,
    current_thread: bool,
    logging: Option<(LogFormat, Option<String>)>,
    exit_code: fn(&anyhow::Error) -> u8,
}

impl Main {
    /// A binary called `name`, on a multi-threaded runtime, without
    /// logging, whose failures exit 1, or [`EX_USAGE`] for a [`UsageError`].
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            current_thread: false,
            logging: None,
            exit_code: usage_or_failure,
        }
    }

    /// Runs on one thread: for a small process such as the sidecar, where
    /// a thread per core would only cost memory.
    pub fn current_thread(mut self) -> Self {
        self.current_thread = true;
        self
    }

    /// Logs to stderr in `format`, filtered by `level` (see
    /// [`init_logging`]); failures are then logged rather than printed.
    pub fn logging(mut self, format: LogFormat, level: Option<String>) -> Self {
        self.logging = Some((format, level));
        self
    }

    /// Maps a failure to its exit status (a binary with its own table,
    /// such as `cofferctl`'s).
    pub fn exit_code(mut self, exit_code: fn(&anyhow::Error) -> u8) -> Self {
        self.exit_code = exit_code;
        self
    }
}

/// Starts logging as `main` says, runs `body` on a fresh tokio runtime, and
/// turns its outcome into the process's exit status.
///
/// - a `--log-level` that does not parse: `NAME: why` on stderr, [`EX_USAGE`];
/// - no runtime: 1;
/// - `body` returns a status: that status;
/// - `body` fails: the error and its causes logged (`error` field, message
///   `NAME failed`) or, without logging, printed as `NAME: error: causes`;
///   the status from [`Main::exit_code`].
pub fn run_main<F>(main: Main, body: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<ExitCode>>,
{
    let logs = main.logging.is_some();
    if let Some((format, level)) = &main.logging
        && let Err(error) = init_logging(*format, level.as_deref())
    {
        eprintln!("{}: {error}", main.name);
        return ExitCode::from(EX_USAGE);
    }
    let runtime = if main.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) if logs => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("{}: cannot start the async runtime: {error}", main.name);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body()) {
        Ok(code) => code,
        Err(error) => {
            if logs {
                tracing::error!(error = format!("{error:#}"), "{} failed", main.name);
            } else {
                eprintln!("{}: {error:#}", main.name);
            }
            ExitCode::from((main.exit_code)(&error))
        }
    }
}

/// [`EX_USAGE`] for a configuration mistake, 1 for anything else.
fn usage_or_failure(error: &anyhow::Error) -> u8 {
    if error.chain().any(|cause| cause.is::<UsageError>()) {
        EX_USAGE
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage;

    #[test]
    fn a_configuration_mistake_exits_64_and_other_failures_1() {
        assert_eq!(usage_or_failure(&usage("bad flag")), EX_USAGE);
        assert_eq!(
            usage_or_failure(&usage("bad flag").context("loading")),
            EX_USAGE
        );
        assert_eq!(usage_or_failure(&anyhow::anyhow!("broker gone")), 1);
    }

    #[test]
    fn the_body_runs_on_the_runtime_and_its_status_is_the_exit_status() {
        let code = run_main(Main::new("test").current_thread(), || async {
            tokio::task::yield_now().await;
            Ok(ExitCode::from(3))
        });
        assert_eq!(code, ExitCode::from(3));
    }

    #[test]
    fn a_failing_body_exits_by_the_mapping() {
        let code = run_main(Main::new("test").exit_code(|_| 7), || async {
            Err(anyhow::anyhow!("no"))
        });
        assert_eq!(code, ExitCode::from(7));
        let code = run_main(Main::new("test"), || async { Err(usage("bad")) });
        assert_eq!(code, ExitCode::from(EX_USAGE));
    }
}
