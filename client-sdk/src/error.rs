//! The one error type of the SDK, a variant per kind, and the gRPC codes.

use std::path::PathBuf;

/// Why a Coffer call failed.
///
/// The broker's own refusals come as one variant per kind (`NotFound`,
/// `PermissionDenied`, ...), each holding the broker's generic, non-secret
/// message; [`Error::code`] gives the gRPC code for any of them. No variant
/// ever holds a secret value or a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path, or the version asked for, does not exist.
    #[error("broker answered NotFound: {0}")]
    NotFound(String),
    /// The policy does not allow this caller to do this.
    #[error("broker answered PermissionDenied: {0}")]
    PermissionDenied(String),
    /// The token is missing, malformed, expired or not trusted.
    #[error("broker answered Unauthenticated: {0}")]
    Unauthenticated(String),
    /// The request is malformed (e.g. an invalid path).
    #[error("broker answered InvalidArgument: {0}")]
    InvalidArgument(String),
    /// The broker (or its backend) cannot be reached now; worth retrying.
    #[error("broker answered Unavailable: {0}")]
    Unavailable(String),
    /// A limit was hit (too many watches, too many requests).
    #[error("broker answered ResourceExhausted: {0}")]
    ResourceExhausted(String),
    /// A check-and-set write found another version than the one expected,
    /// or the operation does not apply in the secret's current state.
    #[error("broker answered FailedPrecondition: {0}")]
    FailedPrecondition(String),
    /// The call took longer than the configured timeout.
    #[error("broker answered DeadlineExceeded: {0}")]
    DeadlineExceeded(String),
    /// Any other status the broker answered with.
    #[error("broker answered {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: Code,
        /// The broker's message.
        message: String,
    },
    /// The endpoint string could not be understood.
    #[error("invalid broker endpoint {0:?}")]
    Endpoint(String),
    /// A plaintext `http://` endpoint that is not a loopback address: the
    /// token and secrets would cross the network in clear. Holds the host.
    #[error("refusing plaintext http:// to {0}: use https://, a loopback address or a Unix socket")]
    Plaintext(String),
    /// The TLS settings could not be used (e.g. a CA file that is not PEM).
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    /// A setting from the environment is missing or unusable.
    #[error("{name}: {reason}")]
    Config {
        /// The environment variable.
        name: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle could not be read.
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A value could not be decoded as asked ([`crate::Secret::json`],
    /// [`crate::Secret::expose_str`]). Says where, never what: the value's
    /// text is not quoted.
    #[error("the value of {path} is not {expected} (line {line}, column {column})")]
    Decode {
        /// The secret's path.
        path: String,
        /// What was expected (`UTF-8 text`, `JSON of the requested type`, ...).
        expected: &'static str,
        /// Where decoding stopped (1-based; 0 when not known).
        line: usize,
        /// Where decoding stopped (1-based; 0 when not known).
        column: usize,
    },
    /// The broker sent something that breaks the contract.
    #[error("invalid response from the broker: {0}")]
    InvalidResponse(&'static str),
    /// A local file could not be read or watched.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The gRPC code, for errors the broker answered with (and
    /// `Unavailable` when it could not be reached).
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Self::NotFound(_) => Code::NotFound,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Unavailable(_) => Code::Unavailable,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Status { code, .. } => *code,
            _ => return None,
        })
    }

    /// Whether the same call may succeed later without any change on the
    /// caller's side: the broker or its backend was away or busy.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Some(
                Code::Unavailable
                    | Code::Unknown
                    | Code::Internal
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::DeadlineExceeded
            )
        )
    }

    /// The error for a broker status.
    pub(crate) fn from_code(code: Code, message: String) -> Self {
        match code {
            Code::NotFound => Self::NotFound(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::InvalidArgument => Self::InvalidArgument(message),
            Code::Unavailable => Self::Unavailable(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::DeadlineExceeded => Self::DeadlineExceeded(message),
            code => Self::Status { code, message },
        }
    }

    /// A transport failure (connection refused, TLS handshake, reset). Its
    /// chain of causes names addresses and protocols, never values.
    pub(crate) fn transport(error: &tonic::transport::Error) -> Self {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Unavailable(text)
    }
}

impl Error {
    /// The error for a status the broker (or tonic) answered with. Not a
    /// `From` impl: tonic's types stay out of the public API.
    pub(crate) fn status(status: tonic::Status) -> Self {
        // tonic reports its own client-side timeout as CANCELLED "Timeout
        // expired"; callers asked for a deadline, so say so.
        if status.code() == tonic::Code::Cancelled && status.message().contains("Timeout expired") {
            return Self::DeadlineExceeded(status.message().to_string());
        }
        Self::from_code(
            Code::from_tonic(status.code()),
            status.message().to_string(),
        )
    }
}

/// A gRPC status code, as the broker answers (`google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// Not an error.
    Ok,
    /// The call was cancelled.
    Cancelled,
    /// An unknown error (often a broken connection).
    Unknown,
    /// The request is malformed.
    InvalidArgument,
    /// The deadline passed.
    DeadlineExceeded,
    /// Not found.
    NotFound,
    /// Already exists.
    AlreadyExists,
    /// Not allowed by the policy.
    PermissionDenied,
    /// A limit was hit.
    ResourceExhausted,
    /// The state does not allow the operation.
    FailedPrecondition,
    /// Aborted (e.g. a conflict).
    Aborted,
    /// Out of range.
    OutOfRange,
    /// Not implemented by this broker.
    Unimplemented,
    /// An internal error.
    Internal,
    /// Unavailable now.
    Unavailable,
    /// Data loss.
    DataLoss,
    /// Not authenticated.
    Unauthenticated,
}

impl Code {
    /// The code for a `google.rpc.Code` number; unknown numbers are `Unknown`.
    pub fn from_i32(number: i32) -> Self {
        Self::from_tonic(tonic::Code::from_i32(number))
    }

    fn from_tonic(code: tonic::Code) -> Self {
        use tonic::Code as T;
        match code {
            T::Ok => Self::Ok,
            T::Cancelled => Self::Cancelled,
            T::Unknown => Self::Unknown,
            T::InvalidArgument => Self::InvalidArgument,
            T::DeadlineExceeded => Self::DeadlineExceeded,
            T::NotFound => Self::NotFound,
            T::AlreadyExists => Self::AlreadyExists,
            T::PermissionDenied => Self::PermissionDenied,
            T::ResourceExhausted => Self::ResourceExhausted,
            T::FailedPrecondition => Self::FailedPrecondition,
            T::Aborted => Self::Aborted,
            T::OutOfRange => Self::OutOfRange,
            T::Unimplemented => Self::Unimplemented,
            T::Internal => Self::Internal,
            T::Unavailable => Self::Unavailable,
            T::DataLoss => Self::DataLoss,
            T::Unauthenticated => Self::Unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_broker_status_becomes_its_kind_and_keeps_its_code() {
        for (code, check) in [
            (tonic::Code::NotFound, "broker answered NotFound"),
            (
                tonic::Code::PermissionDenied,
                "broker answered PermissionDenied",
            ),
            (
                tonic::Code::Unauthenticated,
                "broker answered Unauthenticated",
            ),
            (
                tonic::Code::InvalidArgument,
                "broker answered InvalidArgument",
            ),
            (tonic::Code::Unavailable, "broker answered Unavailable"),
        ] {
            let error = Error::status(tonic::Status::new(code, "m"));
            assert_eq!(error.code(), Some(Code::from_tonic(code)));
            assert!(error.to_string().starts_with(check), "{error}");
        }
        let other = Error::status(tonic::Status::new(tonic::Code::DataLoss, "m"));
        assert_eq!(other.code(), Some(Code::DataLoss));
    }
}
