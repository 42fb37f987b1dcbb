use tonic::Code;

/// Why a Coffer call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is malformed or the connection could not be set up.
    #[error("cannot connect to the broker: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The endpoint string could not be understood.
    #[error("invalid broker endpoint {0:?}")]
    Endpoint(String),
    /// A plaintext `http://` endpoint that is not a loopback address: the
    /// token and secrets would cross the network in clear. Holds the host.
    #[error("refusing plaintext http:// to {0}: use https://, a loopback address or a Unix socket")]
    Plaintext(String),
    /// The broker answered with an error status. The message is the broker's
    /// generic, non-secret text.
    #[error("broker answered {code:?}: {message}")]
    Status {
        /// The gRPC code (e.g. `PermissionDenied`).
        code: Code,
        /// The broker's message.
        message: String,
    },
    /// The token could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The broker sent something that breaks the contract.
    #[error("invalid response from the broker: {0}")]
    InvalidResponse(&'static str),
    /// A local file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The gRPC code, for errors the broker returned.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::Status {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}
