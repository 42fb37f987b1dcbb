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
/// What every spec label starts with. Setting or changing one needs the
/// `rotate` capability, like rotating does.
pub const LABEL_PREFIX: &str = "coffer.rotate/";

/// The default alphabet: letters and digits, safe in every file format.
pub const DEFAULT_ALPHABET: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// The default length, in characters (or bytes for hex/base64).
pub const DEFAULT_LENGTH: u32 = 32;
/// The longest value generated.
pub const MAX_LENGTH: u32 = 4096;
/// The least entropy a generated value may have, in bits: `length ×
/// log2(alphabet size)` for characters, `8 × length` for hex and base64.
/// A weaker spec (e.g. `length=1,alphabet=01`) is refused, whether asked
/// for or found stored with the secret.
pub const MIN_ENTROPY_BITS: u32 = 128;

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
    #[error(
        "the spec gives {bits} bits of entropy; at least {MIN_ENTROPY_BITS} are needed \
         (length × log2 of the alphabet's size, or 8 per byte for hex and base64)"
    )]
    Weak { bits: u32 },
    #[error("the key to rotate must be a non-empty name")]
    Key,
    #[error(
        "the secret has no key of the name the rotation spec gives: rotate an existing key \
         (write a new key with put first)"
    )]
    NoSuchKey,
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
        let spec = Self {
            length,
            encoding,
            key,
        };
        let bits = spec.entropy_bits();
        if bits < f64::from(MIN_ENTROPY_BITS) {
            // Rounded down: the message never claims more than there is.
            return Err(RotationError::Weak { bits: bits as u32 });
        }
        Ok(spec)
    }

    /// The entropy of one generated value, in bits.
    pub fn entropy_bits(&self) -> f64 {
        let per_symbol = match &self.encoding {
            Encoding::Chars(chars) => (chars.len() as f64).log2(),
            Encoding::Hex | Encoding::Base64 => 8.0,
        };
        f64::from(self.length) * per_symbol
    }

    /// The spec labels (`coffer.rotate/*`) among `labels`.
    pub fn stored(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        labels
            .iter()
            .filter(|(name, _)| name.starts_with(LABEL_PREFIX))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
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
    /// value, or for a map the same map with one key replaced; and the key
    /// that changed (`None`: the whole value).
    ///
    /// The key must exist in a map that exists: a spec naming a key the
    /// secret lacks would otherwise add a new key and leave the value it
    /// was meant to replace in place, while the rollout reports success.
    pub fn next_value(
        &self,
        current: Option<&SecretData>,
    ) -> Result<(SecretData, Option<String>), RotationError> {
        let key = match (current, &self.key) {
            (None | Some(SecretData::Bytes(_)), None) => None,
            // A path that does not exist yet is created with the key.
            (None, Some(key)) => Some(key.clone()),
            (Some(SecretData::Bytes(_)), Some(_)) => return Err(RotationError::NotAMap),
            (Some(SecretData::Map(map)), Some(key)) if map.contains_key(key) => Some(key.clone()),
            (Some(SecretData::Map(_)), Some(_)) => return Err(RotationError::NoSuchKey),
            // A map of one key (Vault keeps plain values so) is rotated
            // whole.
            (Some(SecretData::Map(map)), None) if map.len() == 1 => map.keys().next().cloned(),
            (Some(SecretData::Map(_)), None) => return Err(RotationError::NeedsKey),
        };
        let fresh = self.generate(&SystemRandom::new())?;
        let next = match (current, &key) {
            (Some(SecretData::Map(map)), Some(key)) => {
                let mut next = map.clone();
                next.insert(key.clone(), fresh);
                SecretData::Map(next)
            }
            (_, Some(key)) => SecretData::Map(BTreeMap::from([(key.clone(), fresh)])),
            (_, None) => SecretData::Bytes(fresh),
        };
        Ok((next, key))
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
        let value = spec(130, Some("ab"), None)
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(value.len(), 130);
        assert!(value.expose().iter().all(|b| matches!(b, b'a' | b'b')));
        let hex = spec(16, None, Some("hex"))
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.expose().iter().all(u8::is_ascii_hexdigit));
        let b64 = spec(18, None, Some("base64"))
            .generate(&SystemRandom::new())
            .unwrap();
        assert_eq!(b64.len(), 24);
    }

    #[test]
    fn a_stored_spec_is_used_when_the_request_gives_none() {
        let stored = spec(81, Some("xyz"), None).labels();
        let resolved = RotationSpec::resolve(None, &stored).unwrap();
        assert_eq!(resolved, spec(81, Some("zyx"), None));
        let default = RotationSpec::resolve(None, &BTreeMap::new()).unwrap();
        assert_eq!(default.length, DEFAULT_LENGTH);
        assert!(default.entropy_bits() >= f64::from(MIN_ENTROPY_BITS));
    }

    fn resolve(length: u32, alphabet: &str, encoding: &str) -> Result<RotationSpec, RotationError> {
        RotationSpec::resolve(
            Some(&v1::RotationSpec {
                length: Some(length),
                alphabet: Some(alphabet.into()),
                encoding: Some(encoding.into()),
                key: None,
            }),
            &BTreeMap::new(),
        )
    }

    #[test]
    fn bad_specs_are_refused() {
        let bad = |length, alphabet: &str, encoding: &str| {
            resolve(length, alphabet, encoding).unwrap_err()
        };
        assert_eq!(bad(0, "ab", "chars"), RotationError::Length);
        assert_eq!(bad(MAX_LENGTH + 1, "ab", "chars"), RotationError::Length);
        assert_eq!(bad(200, "aaaa", "chars"), RotationError::Alphabet);
        assert_eq!(bad(200, "a\nb", "chars"), RotationError::Alphabet);
        assert_eq!(bad(200, "ab", "rot13"), RotationError::Encoding);
    }

    #[test]
    fn specs_below_the_entropy_floor_are_refused_asked_for_or_stored() {
        let weak =
            |length, alphabet: &str, encoding: &str| match resolve(length, alphabet, encoding) {
                Err(RotationError::Weak { bits }) => bits,
                other => panic!("{length} {alphabet} {encoding}: {other:?}"),
            };
        assert_eq!(weak(1, "01", "chars"), 1);
        assert_eq!(weak(127, "01", "chars"), 127);
        assert_eq!(weak(15, "", "hex"), 120);
        assert_eq!(weak(21, DEFAULT_ALPHABET, "chars"), 125);
        // Exactly at the floor, and just above it.
        resolve(128, "01", "chars").unwrap();
        resolve(16, "", "hex").unwrap();
        resolve(16, "", "base64").unwrap();
        resolve(22, DEFAULT_ALPHABET, "chars").unwrap();
        let planted = BTreeMap::from([
            (LABEL_LENGTH.to_string(), "1".to_string()),
            (LABEL_ALPHABET.to_string(), "01".to_string()),
        ]);
        assert_eq!(
            RotationSpec::resolve(None, &planted).unwrap_err(),
            RotationError::Weak { bits: 1 }
        );
        let message = RotationError::Weak { bits: 1 }.to_string();
        assert!(message.contains("at least 128"), "{message}");
    }

    #[test]
    fn one_key_of_a_map_is_rotated_and_the_others_kept() {
        let mut s = spec(32, None, None);
        s.key = Some("password".into());
        let current = SecretData::Map(BTreeMap::from([
            ("user".to_string(), SecretBytes::from(&b"app"[..])),
            ("password".to_string(), SecretBytes::from(&b"old"[..])),
        ]));
        let (next, key) = s.next_value(Some(&current)).unwrap();
        assert_eq!(key.as_deref(), Some("password"));
        assert_eq!(next.key("user").unwrap().expose(), b"app");
        assert_eq!(next.key("password").unwrap().len(), 32);
        s.key = Some("unused".into());
        assert_eq!(
            s.next_value(Some(&current)).unwrap_err(),
            RotationError::NoSuchKey
        );
        s.key = None;
        assert_eq!(
            s.next_value(Some(&current)).unwrap_err(),
            RotationError::NeedsKey
        );
    }

    #[test]
    fn the_key_rotated_is_reported() {
        let s = spec(32, None, None);
        let one = SecretData::Map(BTreeMap::from([(
            "token".to_string(),
            SecretBytes::from(&b"old"[..]),
        )]));
        assert_eq!(
            s.next_value(Some(&one)).unwrap().1.as_deref(),
            Some("token")
        );
        let bytes = SecretData::Bytes(SecretBytes::from(&b"old"[..]));
        assert_eq!(s.next_value(Some(&bytes)).unwrap().1, None);
        assert_eq!(s.next_value(None).unwrap().1, None);
        let mut keyed = s.clone();
        keyed.key = Some("password".into());
        let (created, key) = keyed.next_value(None).unwrap();
        assert_eq!(key.as_deref(), Some("password"));
        assert!(created.key("password").is_some());
    }
}
