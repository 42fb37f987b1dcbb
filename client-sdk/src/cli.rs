//! Helpers the Coffer binaries share: logging set-up and the shutdown signal.

use tracing_subscriber::{EnvFilter, fmt};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Installs the global `tracing` subscriber, writing to stderr. `RUST_LOG`
/// overrides the default filter (`info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter);
}

/// Like [`init_tracing`], but `level` (a level such as `debug`, or
/// `RUST_LOG`-style directives), when given, replaces `RUST_LOG`.
///
/// # Errors
/// The directives do not parse; the message says why.
pub fn init_tracing_with_level(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    match level {
        Some(level) => {
            let filter = EnvFilter::builder()
                .parse(level)
                .map_err(|e| format!("--log-level {level:?}: {e}"))?;
            install(format, filter);
        }
        None => init_tracing(format),
    }
    Ok(())
}

fn install(format: LogFormat, filter: EnvFilter) {
    // Colour only for a person at a terminal; files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init (e.g. in tests) keeps the first subscriber: not an error.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
