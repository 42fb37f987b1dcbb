//! Writing a new version: [`Put`] and [`Client::put`].

use std::collections::BTreeMap;

use coffer_proto::{SecretData, v1};

use crate::{Client, Error};

/// A new version to write with [`Client::put`].
///
/// ```
/// use coffer::{SecretData, operator::Put};
/// let put = Put::new("app/db", SecretData::Bytes(b"s3cret".to_vec().into()))
///     .content_type("text/plain")
///     .only_if_version(3);
/// # let _ = put;
/// ```
#[derive(Debug)]
pub struct Put {
    path: String,
    data: SecretData,
    content_type: String,
    cas: Option<u64>,
    labels: BTreeMap<String, String>,
}

impl Put {
    /// Writes `data` at `path`, whatever the current version.
    pub fn new(path: impl Into<String>, data: SecretData) -> Self {
        Self {
            path: path.into(),
            data,
            content_type: String::new(),
            cas: None,
            labels: BTreeMap::new(),
        }
    }

    /// A MIME type hint (`text/plain`, `application/json`).
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Check-and-set: write only if the current version is `version`;
    /// otherwise [`Error::FailedPrecondition`].
    pub fn only_if_version(mut self, version: u64) -> Self {
        self.cas = Some(version);
        self
    }

    /// Write only if the path does not exist yet.
    pub fn only_if_absent(mut self) -> Self {
        self.cas = Some(0);
        self
    }

    /// Check-and-set from an optional version (`None`: always write).
    pub fn cas(mut self, version: Option<u64>) -> Self {
        self.cas = version;
        self
    }

    /// A non-secret label stored with the version.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn into_wire(self) -> v1::PutSecretRequest {
        v1::PutSecretRequest {
            path: self.path,
            value: Some(self.data.into()),
            content_type: self.content_type,
            cas: self.cas,
            labels: self.labels.into_iter().collect(),
        }
    }
}

impl Client {
    /// Writes a new version (capability `write`). Returns the version
    /// written. Not retried: a write whose answer was lost may have happened.
    pub async fn put(&self, put: Put) -> Result<u64, Error> {
        let request = self.request(put.into_wire())?;
        Ok(self
            .operator()
            .put_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .version)
    }
}
