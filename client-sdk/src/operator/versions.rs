//! The versions a secret keeps, and what an operator does to them: list,
//! soft-delete, restore, destroy, roll back.

use std::{collections::BTreeMap, time::SystemTime};

use coffer_proto::v1;

use crate::{Client, Error};

/// The versions of a secret ([`Client::versions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Versions {
    /// The version reads return.
    pub current: u64,
    /// Every version the backend keeps, oldest first.
    pub versions: Vec<VersionInfo>,
    /// The rotation spec stored with the secret: its `coffer.rotate/*`
    /// labels (e.g. `coffer.rotate/length` = `40`), read by the broker from
    /// the secret's metadata, never from its value. Empty when none is
    /// stored.
    pub rotation_labels: BTreeMap<String, String>,
}

/// One version's non-secret facts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was written.
    pub created_at: Option<SystemTime>,
    /// Whether it can be read.
    pub state: VersionState,
}

/// Whether a version can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionState {
    /// Readable.
    Live,
    /// Soft-deleted: unreadable until undeleted.
    Deleted,
    /// Destroyed for good.
    Destroyed,
}

/// What [`Client::change_versions`] does to versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionAction {
    /// Soft-delete: unreadable until undeleted.
    Delete,
    /// Restore soft-deleted versions.
    Undelete,
    /// Remove the values for good.
    Destroy,
}

impl From<v1::ListVersionsResponse> for Versions {
    fn from(wire: v1::ListVersionsResponse) -> Self {
        Self {
            current: wire.current_version,
            rotation_labels: wire.rotation_labels.into_iter().collect(),
            versions: wire
                .versions
                .into_iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    created_at: v.created_at.and_then(|t| SystemTime::try_from(t).ok()),
                    state: if v.destroyed {
                        VersionState::Destroyed
                    } else if v.deleted {
                        VersionState::Deleted
                    } else {
                        VersionState::Live
                    },
                })
                .collect(),
        }
    }
}

impl Client {
    /// The versions of `path` (capability `list`).
    pub async fn versions(&self, path: &str) -> Result<Versions, Error> {
        let response = self
            .retrying(|| async {
                let request = self.request(v1::ListVersionsRequest {
                    path: path.to_string(),
                })?;
                self.operator()
                    .list_versions(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner().into())
    }

    /// Soft-deletes (`delete`), restores (`undelete`) or destroys
    /// (`destroy`) `versions` of `path`; empty means the current version.
    pub async fn change_versions(
        &self,
        action: VersionAction,
        path: &str,
        versions: Vec<u64>,
    ) -> Result<(), Error> {
        let request = self.request(v1::DeleteVersionsRequest {
            path: path.to_string(),
            versions,
        })?;
        let mut operator = self.operator();
        match action {
            VersionAction::Delete => operator
                .delete_versions(request)
                .await
                .map_err(Error::status)?,
            VersionAction::Undelete => operator
                .undelete_versions(request)
                .await
                .map_err(Error::status)?,
            VersionAction::Destroy => operator
                .destroy_versions(request)
                .await
                .map_err(Error::status)?,
        };
        Ok(())
    }

    /// Makes `to_version`'s value current again, as a new version
    /// (capability `rollback`). Returns the new version.
    pub async fn rollback(&self, path: &str, to_version: u64) -> Result<u64, Error> {
        let request = self.request(v1::RollbackSecretRequest {
            path: path.to_string(),
            to_version,
        })?;
        Ok(self
            .operator()
            .rollback_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .version)
    }
}
