//! Generated values for `RotateSecret`: the rotation spec and the generator.
//!
//! A spec (length, alphabet or encoding, which key of a map) is not secret.
//! It lives with the secret as labels (`coffer.rotate/*`; Vault KV v2
//! `custom_metadata`), so every replica and `cofferctl` agree on how the
//! next value is made. Values come from ring's `SystemRandom` and live only
//! in zeroizing buffers.

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use coffer_proto::{SecretBytes, SecretData, v1};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Label names the spec is stored under.
pub const LABEL_LENGTH: &str = "coffer.rotate/length";
/// See [`LABEL_LENGTH`].
pub const LABEL_ALPHABET: &str = "coffer.rotate/alphabet";
/// See [`LABEL_LENGTH`].
pub const LABEL_ENCODING: &str = "coffer.rotate/encoding";
/// See [`LABEL_LENGTH`].
pub const LABEL_KEY: &str = "coffer.rotate/key";

/// The default alphabet: letters and digits, safe in every file format.
pub const DEFAULT_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The default length, in characters (or bytes for hex/base64).
pub const DEFAULT_LENGTH: u32 = 32;
/// The longest value generated.
pub const MAX_LENGTH: u32 = 4096;

/// How the random bytes become the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoding {
    /// `length` characters drawn uniformly from an alphabet.
    Chars(Vec<char>),
    /// `length` random bytes, hex-encoded.
    Hex,
    /// `length` random bytes, standard base64.
    Base64,
}

/// A complete, validated rotation spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationSpec {
    pub length: u32,
    pub encoding: Encoding,
    /// The map key to rotate, if any.
    pub key: Option<String>,
}

/// Why a spec or a rotation is refused; each message is safe for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    #[error("length must be between 1 and {MAX_LENGTH}")]
    Length,
    #[error("the alphabet needs at least 2 distinct characters and at most 256")]
    Alphabet,
    #[error("encoding must be chars, hex or base64")]
    Encoding,
    #[error("the key to rotate must be a non-empty name")]
    Key,
    #[error("the secret is a map with several keys: name the key to rotate")]
    NeedsKey,
    #[error("the secret is not a map: it has no keys")]
    NotAMap,
    #[error("the system random number generator failed")]
    Random,
}

impl RotationSpec {
    /// The spec for this rotation: the request's fields, then the stored
    /// labels, then the defaults.
    pub fn resolve(
        request: Option<&v1::RotationSpec>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Self, RotationError> {
        let asked = request.cloned().unwrap_or_default();
        let length = match asked.length {
            Some(n) => n,
            None => match labels.get(LABEL_LENGTH) {
                Some(text) => text.parse().map_err(|_| RotationError::Length)?,
                None => DEFAULT_LENGTH,
            },
        };
        if !(1..=MAX_LENGTH).contains(&length) {
            return Err(RotationError::Length);
        }
        let encoding = asked
            .encoding
            .or_else(|| labels.get(LABEL_ENCODING).cloned())
            .unwrap_or_else(|| "chars".into());
        let encoding = match encoding.as_str() {
            "chars" => {
                let alphabet = asked
                    .alphabet
                    .or_else(|| labels.get(LABEL_ALPHABET).cloned())
                    .unwrap_or_else(|| DEFAULT_ALPHABET.into());
                let mut chars: Vec<char> = alphabet.chars().collect();
                chars.sort_unstable();
                chars.dedup();
                if !(2..=256).contains(&chars.len()) || chars.iter().any(|c| c.is_control()) {
                    return Err(RotationError::Alphabet);
                }
                Encoding::Chars(chars)
            }
            "hex" => Encoding::Hex,
            "base64" => Encoding::Base64,
            _ => return Err(RotationError::Encoding),
        };
        let key = asked.key.or_else(|| labels.get(LABEL_KEY).cloned());
        if key.as_deref().is_some_and(str::is_empty) {
            return Err(RotationError::Key);
        }
        Ok(Self {
            length,
            encoding,
            key,
        })
    }

    /// The spec as labels, to store beside the secret.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([(LABEL_LENGTH.to_string(), self.length.to_string())]);
        let encoding = match &self.encoding {
            Encoding::Chars(chars) => {
                labels.insert(LABEL_ALPHABET.into(), chars.iter().collect());
                "chars"
            }
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        };
        labels.insert(LABEL_ENCODING.into(), encoding.into());
        if let Some(key) = &self.key {
            labels.insert(LABEL_KEY.into(), key.clone());
        }
        labels
    }

    /// A fresh value as this spec describes.
    pub fn generate(&self, rng: &dyn SecureRandom) -> Result<SecretBytes, RotationError> {
        let length = self.length as usize;
        match &self.encoding {
            Encoding::Chars(alphabet) => {
                // Rejection sampling keeps every character equally likely:
                // bytes at or above the largest multiple of the alphabet's
                // size are drawn again.
                let n = alphabet.len();
                let limit = 256 - (256 % n);
                let mut out = Zeroizing::new(String::with_capacity(length));
                let mut pool = Zeroizing::new([0u8; 64]);
                let mut count = 0;
                while count < length {
                    rng.fill(&mut pool[..]).map_err(|_| RotationError::Random)?;
                    for &b in pool.iter() {
                        if count == length {
                            break;
                        }
                        if usize::from(b) < limit {
                            out.push(alphabet[usize::from(b) % n]);
                            count += 1;
                        }
                    }
                }
                Ok(SecretBytes::new(std::mem::take(&mut *out).into_bytes()))
            }
            Encoding::Hex | Encoding::Base64 => {
                let mut raw = Zeroizing::new(vec![0u8; length]);
                rng.fill(&mut raw).map_err(|_| RotationError::Random)?;
                // Sized up front, so no reallocation leaves a copy behind.
                let text = match self.encoding {
                    Encoding::Hex => {
                        const DIGITS: &[u8; 16] = b"0123456789abcdef";
                        let mut text = Zeroizing::new(String::with_capacity(2 * length));
                        for b in raw.iter() {
                            text.push(char::from(DIGITS[usize::from(b >> 4)]));
                            text.push(char::from(DIGITS[usize::from(b & 0xf)]));
                        }
                        text
                    }
                    _ => {
                        let mut text =
                            Zeroizing::new(String::with_capacity(4 * length.div_ceil(3)));
                        STANDARD.encode_string(&*raw, &mut text);
                        text
                    }
                };
                Ok(SecretBytes::from(text.as_bytes()))
            }
        }
    }

    /// The next value of a secret whose current value is `current`: a new
    /// value, or for a map the same map with one key replaced.
    pub fn next_value(&self, current: Option<&SecretData>) -> Result<SecretData, RotationError> {
        let fresh = self.generate(&SystemRandom::new())?;
        match (current, &self.key) {
            (None | Some(SecretData::Bytes(_)), None) => Ok(SecretData::Bytes(fresh)),
            (None, Some(key)) => Ok(SecretData::Map(BTreeMap::from([(key.clone(), fresh)]))),
            (Some(SecretData::Bytes(_)), Some(_)) => Err(RotationError::NotAMap),
            (Some(SecretData::Map(map)), key) => {
                let key = match key {
                    Some(key) => key.clone(),
                    // A map of one key (Vault keeps plain values so) is
                    // rotated whole.
                    None if map.len() == 1 => map.keys().next().cloned().unwrap_or_default(),
                    None => return Err(RotationError::NeedsKey),
                };
                let mut next = map.clone();
                next.insert(key, fresh);
                Ok(SecretData::Map(next))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(length: u32, alphabet: Option<&str>, encoding: Option<&str>) -> RotationSpec {
        RotationSpec::resolve(
            Some(&v1::RotationSpec {
                length: Some(length),
                alphabet: alphabet.map(str::to_string),
                encoding: encoding.map(str::to_string),
                key: None,
            }),
            &BTreeMap::new(),
        )
        .unwrap()
    }

    #[test]
    fn values_have_the_length_and_alphabet_asked_for() {
        let value = spec(40, Some("ab"), None)
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(value.len(), 40);
        assert!(value.expose().iter().all(|b| matches!(b, b'a' | b'b')));
        let hex = spec(16, None, Some("hex"))
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.expose().iter().all(u8::is_ascii_hexdigit));
        let b64 = spec(3, None, Some("base64"))
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(b64.len(), 4);
    }

    #[test]
    fn a_stored_spec_is_used_when_the_request_gives_none() {
        let stored = spec(12, Some("xyz"), None).labels();
        let resolved = RotationSpec::resolve(None, &stored).unwrap();
        assert_eq!(resolved, spec(12, Some("zyx"), None));
        let default = RotationSpec::resolve(None, &BTreeMap::new()).unwrap();
        assert_eq!(default.length, DEFAULT_LENGTH);
    }

    #[test]
    fn bad_specs_are_refused() {
        let bad = |length, alphabet: &str, encoding: &str| {
            RotationSpec::resolve(
                Some(&v1::RotationSpec {
                    length: Some(length),
                    alphabet: Some(alphabet.into()),
                    encoding: Some(encoding.into()),
                    key: None,
                }),
                &BTreeMap::new(),
            )
            .unwrap_err()
        };
        assert_eq!(bad(0, "ab", "chars"), RotationError::Length);
        assert_eq!(bad(MAX_LENGTH + 1, "ab", "chars"), RotationError::Length);
        assert_eq!(bad(8, "aaaa", "chars"), RotationError::Alphabet);
        assert_eq!(bad(8, "a\nb", "chars"), RotationError::Alphabet);
        assert_eq!(bad(8, "ab", "rot13"), RotationError::Encoding);
    }

    #[test]
    fn one_key_of_a_map_is_rotated_and_the_others_kept() {
        let mut s = spec(8, None, None);
        s.key = Some("password".into());
        let current = SecretData::Map(BTreeMap::from([
            ("user".to_string(), SecretBytes::from(&b"app"[..])),
            ("password".to_string(), SecretBytes::from(&b"old"[..])),
        ]));
        let next = s.next_value(Some(&current)).unwrap();
        assert_eq!(next.key("user").unwrap().expose(), b"app");
        assert_eq!(next.key("password").unwrap().len(), 8);
        s.key = None;
        assert_eq!(
            s.next_value(Some(&current)).unwrap_err(),
            RotationError::NeedsKey
        );
    }
}
