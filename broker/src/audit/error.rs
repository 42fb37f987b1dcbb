//! The audit trail's one error type: why it could not be opened or written.

/// Why the audit trail could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit file {0} does not end with a complete record: move it aside")]
    Damaged(String),
    #[error(
        "audit file {file} was written {} an HMAC key: keep the same setting or move the trail aside",
        if *.keyed { "with" } else { "without" }
    )]
    ChainMismatch { file: String, keyed: bool },
    #[error("cannot encode audit record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the audit writer has stopped")]
    Stopped,
}
