//! What a workload tells the broker after writing a version where its
//! application reads it: applied, or failed and why. Operators read the
//! sum of these with [`Client::status`](crate::Client::status).

use coffer_proto::v1;

use crate::{Client, Error};

/// What a workload reports, or the broker says, about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ApplyState {
    /// Written where the application reads it.
    Applied,
    /// Writing failed; the previous version is still in place.
    Failed,
    /// Watching, but not acknowledged the current version yet.
    Pending,
    /// A state this SDK does not know (a newer broker).
    #[default]
    Unknown,
}

impl ApplyState {
    /// A short lowercase name (`applied`, `failed`, `pending`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Pending => "pending",
            Self::Unknown => "unknown",
        }
    }

    pub(crate) fn from_wire(state: i32) -> Self {
        match v1::ApplyState::try_from(state) {
            Ok(v1::ApplyState::Applied) => Self::Applied,
            Ok(v1::ApplyState::Failed) => Self::Failed,
            Ok(v1::ApplyState::Pending) => Self::Pending,
            _ => Self::Unknown,
        }
    }

    pub(crate) fn to_wire(self) -> v1::ApplyState {
        match self {
            Self::Applied => v1::ApplyState::Applied,
            Self::Failed => v1::ApplyState::Failed,
            Self::Pending => v1::ApplyState::Pending,
            Self::Unknown => v1::ApplyState::Unspecified,
        }
    }
}

/// One acknowledgement for [`Client::ack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The path as watched.
    pub path: String,
    /// The version written (or not).
    pub version: u64,
    /// Applied or failed.
    pub state: ApplyState,
    /// A short, non-secret reason for a failure.
    pub reason: String,
}

impl From<Applied> for v1::AppliedVersion {
    fn from(a: Applied) -> Self {
        Self {
            path: a.path,
            version: a.version,
            state: a.state.to_wire() as i32,
            reason: a.reason,
        }
    }
}

impl Client {
    /// Reports the versions this workload applied.
    pub async fn ack(&self, applied: Vec<Applied>) -> Result<(), Error> {
        let request = self.request(v1::AckSecretsRequest {
            applied: applied.into_iter().map(Into::into).collect(),
        })?;
        self.broker()
            .ack_secrets(request)
            .await
            .map_err(Error::status)?;
        Ok(())
    }
}
