use std::{collections::BTreeMap, time::Duration, time::SystemTime};

use coffer_proto::{SecretBytes, SecretData, v1};

use crate::Error;

/// One version of one secret, as the broker served it.
///
/// `Debug` shows the path and version, never the value; there is no `Display`.
#[derive(Debug, Clone)]
pub struct Secret {
    path: String,
    version: u64,
    content_type: String,
    data: SecretData,
    created_at: Option<SystemTime>,
    ttl_hint: Option<Duration>,
    labels: BTreeMap<String, String>,
}

impl Secret {
    /// The path this value was read from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The version served.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The content type hint; may be empty.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The value.
    pub fn data(&self) -> &SecretData {
        &self.data
    }

    /// The value's bytes, if it is a single value (also the case for `path#key`).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.data {
            SecretData::Bytes(b) => Some(b.expose()),
            SecretData::Map(_) => None,
        }
    }

    /// One key of a map value.
    pub fn key(&self, name: &str) -> Option<&[u8]> {
        self.data.key(name).map(SecretBytes::expose)
    }

    /// When this version was created in the backend.
    pub fn created_at(&self) -> Option<SystemTime> {
        self.created_at
    }

    /// How long the value may be used without asking again, if the broker said.
    pub fn ttl_hint(&self) -> Option<Duration> {
        self.ttl_hint
    }

    /// Non-secret labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

impl TryFrom<v1::Secret> for Secret {
    type Error = Error;

    fn try_from(mut wire: v1::Secret) -> Result<Self, Error> {
        let value = wire
            .value
            .take()
            .ok_or(Error::InvalidResponse("secret without a value"))?;
        let data = SecretData::try_from(value)
            .map_err(|_| Error::InvalidResponse("secret value holds neither bytes nor a map"))?;
        let metadata = wire.metadata.take().unwrap_or_default();
        Ok(Self {
            path: wire.path,
            version: wire.version,
            content_type: wire.content_type,
            data,
            created_at: metadata
                .created_at
                .and_then(|t| SystemTime::try_from(t).ok()),
            ttl_hint: metadata.ttl_hint.and_then(|d| Duration::try_from(d).ok()),
            labels: metadata.labels.into_iter().collect(),
        })
    }
}
