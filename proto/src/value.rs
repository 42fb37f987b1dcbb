//! Secret values as both ends of the contract hold them: in zeroizing buffers
//! whose `Debug` prints `[REDACTED]`. They have no `Display` and no
//! `Serialize`, so a value cannot reach a log or a file by accident.

use std::{collections::BTreeMap, fmt};

use zeroize::Zeroizing;

use crate::v1::{SecretMap, SecretValue, secret_value::Kind};

/// Secret bytes, wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The bytes themselves: call this only where the value is used.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes, moved out without a copy: only into a message that wipes
    /// itself on drop (see [`SecretValue`]'s `Drop`). What is left here is
    /// an empty buffer.
    fn into_wiped_on_drop(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

impl From<&[u8]> for SecretBytes {
    fn from(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A secret's value: opaque bytes, or a map of named values (as in Vault KV).
#[derive(Clone, PartialEq, Eq)]
pub enum SecretData {
    /// One opaque value.
    Bytes(SecretBytes),
    /// Named values; key names are not secret.
    Map(BTreeMap<String, SecretBytes>),
}

impl SecretData {
    /// The value of one key of a map; `None` for bytes or a missing key.
    pub fn key(&self, name: &str) -> Option<&SecretBytes> {
        match self {
            Self::Bytes(_) => None,
            Self::Map(map) => map.get(name),
        }
    }

    /// The total size of the value in bytes (not secret).
    pub fn size(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Map(map) => map.iter().map(|(k, v)| k.len() + v.len()).sum(),
        }
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(_) => f.write_str("Bytes([REDACTED])"),
            Self::Map(map) => f
                .debug_struct("Map")
                .field("keys", &map.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

/// A wire value that holds neither bytes nor a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("secret value is empty: neither data nor map is set")]
pub struct MissingValue;

impl From<SecretData> for SecretValue {
    fn from(data: SecretData) -> Self {
        // The bytes move into the message, not copied: it wipes them when
        // dropped, as the buffers they came from would have.
        let kind = match data {
            SecretData::Bytes(bytes) => Kind::Data(bytes.into_wiped_on_drop()),
            SecretData::Map(map) => Kind::Map(SecretMap {
                entries: map
                    .into_iter()
                    .map(|(k, v)| (k, v.into_wiped_on_drop()))
                    .collect(),
            }),
        };
        Self { kind: Some(kind) }
    }
}

impl TryFrom<SecretValue> for SecretData {
    type Error = MissingValue;

    fn try_from(mut value: SecretValue) -> Result<Self, Self::Error> {
        match value.kind.as_mut() {
            Some(Kind::Data(bytes)) => Ok(Self::Bytes(SecretBytes::new(std::mem::take(bytes)))),
            Some(Kind::Map(map)) => Ok(Self::Map(
                std::mem::take(&mut map.entries)
                    .into_iter()
                    .map(|(k, v)| (k, SecretBytes::new(v)))
                    .collect(),
            )),
            None => Err(MissingValue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_bytes() {
        let data =
            SecretData::Map([("pw".to_string(), SecretBytes::from(&b"canary-x"[..]))].into());
        let printed = format!("{data:?} {:?}", SecretBytes::from(&b"canary-y"[..]));
        assert!(!printed.contains("canary"), "{printed}");
        assert!(printed.contains("pw"));
    }

    #[test]
    fn round_trips_through_the_wire_type() {
        let data = SecretData::Map(
            [
                ("a".to_string(), SecretBytes::from(&b"1"[..])),
                ("b".to_string(), SecretBytes::from(&b"2"[..])),
            ]
            .into(),
        );
        let wire = SecretValue::from(data.clone());
        assert_eq!(SecretData::try_from(wire), Ok(data));
        assert_eq!(
            SecretData::try_from(SecretValue { kind: None }),
            Err(MissingValue)
        );
    }

    #[test]
    fn the_bytes_move_into_the_message_and_are_not_copied() {
        let bytes = b"canary-moved".to_vec();
        let at = bytes.as_ptr();
        let value = SecretValue::from(SecretData::Bytes(SecretBytes::new(bytes)));
        // The same buffer: no second copy of the secret left to wipe.
        match &value.kind {
            Some(Kind::Data(data)) => {
                assert_eq!(data.as_ptr(), at);
                assert_eq!(data, b"canary-moved");
            }
            _ => panic!("not data"),
        }
        let map = SecretData::Map([("pw".to_string(), SecretBytes::from(&b"x"[..]))].into());
        let at = match &map {
            SecretData::Map(map) => map["pw"].expose().as_ptr(),
            SecretData::Bytes(_) => unreachable!(),
        };
        match &SecretValue::from(map).kind {
            Some(Kind::Map(map)) => assert_eq!(map.entries["pw"].as_ptr(), at),
            _ => panic!("not a map"),
        }
    }
}
