//! Where results go: stdout, as text for people or one JSON object per
//! result for scripts (`--output`). The [`Printer`] is made once in `main`
//! from the flag and handed to every command, so no command reads a global
//! to learn the format.

use std::{
    fmt,
    io::{self, Write as _},
    time::SystemTime,
};

/// `--output`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

/// Prints results to stdout in the chosen [`Format`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Printer {
    format: Format,
}

/// `println!` through a [`Printer`]: `say!(out, "{path}: version {v}")`.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}
pub(crate) use say;

impl Printer {
    pub(crate) fn new(format: Format) -> Self {
        Self { format }
    }

    /// Whether results are printed as JSON.
    pub(crate) fn json(self) -> bool {
        self.format == Format::Json
    }

    /// One line on stdout. A closed stdout (`cofferctl ... | head`) is not
    /// an error worth a backtrace: a reader that went away reads nothing.
    pub(crate) fn line(self, text: fmt::Arguments<'_>) {
        let _ = writeln!(io::stdout(), "{text}");
    }

    /// One JSON result on a line of its own.
    pub(crate) fn value(self, value: &serde_json::Value) {
        self.line(format_args!("{value}"));
    }

    /// Bytes as they are (a secret's value), with no newline added; errors
    /// are the caller's, since a value cut short must not exit 0.
    pub(crate) fn bytes(self, bytes: &[u8]) -> io::Result<()> {
        io::stdout().lock().write_all(bytes)
    }
}

/// A protobuf or system time as RFC 3339 seconds, or `-` when absent.
pub(crate) fn timestamp<T>(t: Option<T>) -> String
where
    SystemTime: TryFrom<T>,
{
    t.and_then(|t| SystemTime::try_from(t).ok()).map_or_else(
        || "-".to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}
