//! One version of one secret as the broker served it, and the ways to
//! read its value: each accessor that hands out the bytes says `expose`.

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

    /// The value, still wrapped: its `Debug` prints `[REDACTED]`, and its
    /// bytes come out through [`SecretBytes::expose`].
    pub fn data(&self) -> &SecretData {
        &self.data
    }

    /// The value's bytes, if it is a single value (also the case for
    /// `path#key`). Borrowed from the zeroizing buffer; copy them only into
    /// a zeroizing type.
    pub fn expose_bytes(&self) -> Option<&[u8]> {
        match &self.data {
            SecretData::Bytes(b) => Some(b.expose()),
            SecretData::Map(_) => None,
        }
    }

    /// The bytes of one key of a map value, borrowed from the zeroizing
    /// buffer.
    pub fn expose_key(&self, name: &str) -> Option<&[u8]> {
        self.data.key(name).map(SecretBytes::expose)
    }

    /// The value as text: a single value (or `path#key`) that is UTF-8.
    /// Borrowed from the zeroizing buffer; copy it only into a zeroizing
    /// type (`secrecy::SecretString`).
    pub fn expose_str(&self) -> Result<&str, Error> {
        let bytes = self
            .expose_bytes()
            .ok_or_else(|| self.decode_error("a single value", 0, 0))?;
        std::str::from_utf8(bytes).map_err(|_| self.decode_error("UTF-8 text", 0, 0))
    }

    /// The value decoded as JSON into `T`: a single value holding a JSON
    /// document, or a map secret whose keys become the fields of `T` (each
    /// value as a string). The error says where decoding stopped, never
    /// what the text was. Give `T` zeroizing fields (`secrecy::SecretString`)
    /// to keep the values wiped after use.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        match &self.data {
            SecretData::Bytes(bytes) => serde_json::from_slice(bytes.expose())
                .map_err(|e| self.decode_error("JSON of the requested type", e.line(), e.column())),
            SecretData::Map(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, value) in map {
                    let text = std::str::from_utf8(value.expose())
                        .map_err(|_| self.decode_error("a map of UTF-8 values", 0, 0))?;
                    fields.push((key.as_str(), text));
                }
                let deserializer =
                    serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
                        fields.into_iter(),
                    );
                T::deserialize(deserializer).map_err(|_| {
                    self.decode_error("a map with the fields of the requested type", 0, 0)
                })
            }
        }
    }

    fn decode_error(&self, expected: &'static str, line: usize, column: usize) -> Error {
        Error::Decode {
            path: self.path.clone(),
            expected,
            line,
            column,
        }
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

impl Secret {
    /// A secret built locally (files, tests).
    pub(crate) fn local(path: String, version: u64, data: SecretData) -> Self {
        Self {
            path,
            version,
            content_type: String::new(),
            data,
            created_at: None,
            ttl_hint: None,
            labels: BTreeMap::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Secret {
        Secret::local("app/x".into(), 1, SecretData::Bytes(text.as_bytes().into()))
    }

    #[derive(Debug, serde::Deserialize)]
    struct Db {
        user: String,
        port: u16,
    }

    #[test]
    fn json_decodes_a_document_and_a_map() {
        let db: Db = bytes(r#"{"user":"app","port":5432}"#).json().unwrap();
        assert_eq!((db.user.as_str(), db.port), ("app", 5432));
        let map = Secret::local(
            "app/db".into(),
            1,
            SecretData::Map(
                [("user".to_string(), SecretBytes::from(&b"app"[..]))]
                    .into_iter()
                    .collect(),
            ),
        );
        #[derive(serde::Deserialize)]
        struct User {
            user: String,
        }
        assert_eq!(map.json::<User>().unwrap().user, "app");
    }

    #[test]
    fn a_decode_error_never_quotes_the_value() {
        let error = bytes(r#"{"user":"canary-value","port":"canary-port"}"#)
            .json::<Db>()
            .unwrap_err();
        let text = format!("{error} {error:?}");
        assert!(!text.contains("canary"), "{text}");
        assert!(matches!(error, Error::Decode { line: 1, .. }), "{text}");
        let binary = Secret::local("a".into(), 1, SecretData::Bytes(vec![0xff, 0xfe].into()));
        assert!(matches!(binary.expose_str(), Err(Error::Decode { .. })));
    }

    #[test]
    fn debug_is_redacted() {
        let text = format!("{:?}", bytes("canary"));
        assert!(!text.contains("canary"), "{text}");
    }
}
