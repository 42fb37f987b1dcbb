//! The one place where broker errors become gRPC statuses.
//!
//! The client learns the category and a fixed, generic message. The detail
//! (which check failed, what the backend said) is logged here, server-side,
//! and never leaves the process.

use tonic::{Code, Status};

use crate::{auth::AuthError, path::PathError, store::StoreError};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The request is sound but the secret is not in the state it needs
    /// (e.g. rotating a key the secret does not have).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("invalid path: {0}")]
    InvalidPath(#[from] PathError),
    #[error("unauthenticated: {0}")]
    Unauthenticated(#[from] AuthError),
    #[error("permission denied")]
    PermissionDenied,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("not implemented: {0}")]
    Unimplemented(&'static str),
    #[error("broker is shutting down")]
    ShuttingDown,
    #[error("audit trail cannot be written")]
    AuditUnavailable,
    #[error("too many open watches for this identity")]
    TooManyWatches,
    /// The broker holds as many watch streams as its memory allows.
    #[error("the broker holds as many watches as it may")]
    WatchCapacity,
    #[error("lease not found")]
    LeaseNotFound,
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            // Our own validation messages name no secret and no internals.
            ApiError::InvalidArgument(msg) => Status::invalid_argument(msg),
            ApiError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            ApiError::InvalidPath(e) => Status::invalid_argument(e.to_string()),
            ApiError::Unauthenticated(reason) => {
                tracing::warn!(reason = reason.reason(), "authentication failed");
                crate::metrics::auth_failure(reason.reason());
                Status::unauthenticated("authentication failed")
            }
            ApiError::PermissionDenied => Status::permission_denied("permission denied"),
            ApiError::Store(e) => store_status(e),
            ApiError::Unimplemented(what) => {
                Status::unimplemented(format!("{what} is not implemented yet"))
            }
            ApiError::ShuttingDown => Status::unavailable("broker is shutting down"),
            // Fail closed: nothing is served that could not be recorded.
            ApiError::AuditUnavailable => Status::unavailable("audit trail unavailable"),
            ApiError::TooManyWatches => {
                Status::resource_exhausted("too many open watches for this identity")
            }
            ApiError::WatchCapacity => Status::resource_exhausted(
                "the broker holds as many watches as it may; retry later",
            ),
            ApiError::LeaseNotFound => Status::not_found("lease not found"),
        }
    }
}

fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound => Status::not_found("secret not found"),
        StoreError::VersionNotFound(_) => Status::not_found("version not found"),
        StoreError::VersionDeleted(_) => Status::not_found("version was deleted"),
        StoreError::CasMismatch { current } => Status::failed_precondition(format!(
            "check-and-set failed: current version is {current}"
        )),
        StoreError::Unsupported(what) => {
            Status::unimplemented(format!("{what} is not supported by this store"))
        }
        StoreError::Throttled => Status::resource_exhausted("too many requests; retry later"),
        StoreError::Unavailable(detail) => {
            tracing::warn!(error = %detail, "secret store unavailable");
            Status::unavailable("secret store unavailable")
        }
        StoreError::Internal(detail) => {
            tracing::error!(error = %detail, "secret store failure");
            Status::new(Code::Internal, "internal error")
        }
    }
}

/// The same mapping for one item of a batch.
pub fn item_error(error: ApiError) -> coffer_proto::v1::ItemError {
    let status = Status::from(error);
    coffer_proto::v1::ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_detail_never_reaches_the_client() {
        let status = Status::from(ApiError::Store(StoreError::Internal(
            "vault said: token s.abc".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("vault"));
        let status = Status::from(ApiError::Unauthenticated(AuthError::BadSignature));
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, "authentication failed")
        );
    }
}
