//! Logging set-up from the shared flags: `--log-format plain|json` and,
//! where a binary has it, `--log-level`.

use tracing_subscriber::{EnvFilter, fmt};

/// Log output format (`--log-format`, `COFFER_LOG_FORMAT`): `plain`,
/// human-readable lines, or `json`, one JSON object per line.
//
// The variants carry no doc comments on purpose: clap turns a value's doc
// into help text and then lays every flag of the binary out in its long
// form, which would change every binary's `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Installs the global `tracing` subscriber, writing to stderr.
///
/// `level` (a level such as `debug`, or `RUST_LOG`-style directives), when
/// given, replaces `RUST_LOG`; without either the filter is `info`. A second
/// call (e.g. in tests) keeps the first subscriber.
///
/// # Errors
/// `level` does not parse; the message names the flag and says why.
pub fn init_logging(format: LogFormat, level: Option<&str>) -> Result<(), String> {
    let filter = match level {
        Some(level) => EnvFilter::builder()
            .parse(level)
            .map_err(|e| format!("--log-level {level:?}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    // Colour only for a person at a terminal; files and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // A second init keeps the first subscriber: not an error.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_level_is_refused_naming_the_flag() {
        let error = init_logging(LogFormat::Plain, Some("coffer=loud")).unwrap_err();
        assert!(error.starts_with("--log-level"), "{error}");
    }

    #[test]
    fn the_flag_spells_plain_and_json() {
        use clap::ValueEnum;
        assert_eq!(LogFormat::from_str("json", false), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("plain", false), Ok(LogFormat::Plain));
    }
}
