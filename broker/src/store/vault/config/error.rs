//! Why a configuration was refused.

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Vault config: {0}")]
    Parse(String),
    #[error("invalid Vault config: {0}")]
    Invalid(String),
}
