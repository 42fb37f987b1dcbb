//! Having the broker generate a new value: [`Rotate`], [`Client::rotate`].

use coffer_proto::v1;

use crate::{Client, Error};

/// How the broker generates a value for [`Client::rotate`]. Unset
/// fields come from the spec stored with the secret, then the defaults (32
/// characters of `[A-Za-z0-9]`); a spec given is stored for next time.
#[derive(Debug, Clone)]
pub struct Rotate {
    path: String,
    length: Option<u32>,
    alphabet: Option<String>,
    encoding: Option<Encoding>,
    key: Option<String>,
}

/// What [`Client::rotate_detailed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rotated {
    /// The new version.
    pub version: u64,
    /// The map key that got the new value; `None` when the whole value was
    /// replaced.
    pub key: Option<String>,
}

/// The form of a generated value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// Characters drawn from the alphabet.
    Chars,
    /// Random bytes, hex-encoded.
    Hex,
    /// Random bytes, base64-encoded.
    Base64,
}

impl Encoding {
    /// The name the broker knows it by.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chars => "chars",
            Self::Hex => "hex",
            Self::Base64 => "base64",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chars" => Ok(Self::Chars),
            "hex" => Ok(Self::Hex),
            "base64" => Ok(Self::Base64),
            _ => Err(Error::InvalidArgument(
                "encoding must be chars, hex or base64".into(),
            )),
        }
    }
}

impl Rotate {
    /// Rotates `path` with the stored spec.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            length: None,
            alphabet: None,
            encoding: None,
            key: None,
        }
    }

    /// Characters to generate (random bytes for hex and base64).
    pub fn length(mut self, length: u32) -> Self {
        self.length = Some(length);
        self
    }

    /// The characters to draw from (for [`Encoding::Chars`]).
    pub fn alphabet(mut self, alphabet: impl Into<String>) -> Self {
        self.alphabet = Some(alphabet.into());
        self
    }

    /// The form of the value.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// For a map secret: the key to rotate; the others are kept.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    fn into_wire(self) -> v1::RotateSecretRequest {
        let spec = (self.length.is_some()
            || self.alphabet.is_some()
            || self.encoding.is_some()
            || self.key.is_some())
        .then(|| v1::RotationSpec {
            length: self.length,
            alphabet: self.alphabet,
            encoding: self.encoding.map(|e| e.as_str().to_string()),
            key: self.key,
        });
        v1::RotateSecretRequest {
            path: self.path,
            spec,
        }
    }
}

impl Client {
    /// Has the broker generate a new value (capability `rotate`). Returns
    /// the version.
    pub async fn rotate(&self, rotate: Rotate) -> Result<u64, Error> {
        self.rotate_detailed(rotate).await.map(|r| r.version)
    }

    /// Like [`Self::rotate`], also saying which key of a map got the new
    /// value.
    pub async fn rotate_detailed(&self, rotate: Rotate) -> Result<Rotated, Error> {
        let request = self.request(rotate.into_wire())?;
        let answer = self
            .operator()
            .rotate_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner();
        Ok(Rotated {
            version: answer.version,
            key: answer.key.filter(|k| !k.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotate_without_options_sends_no_spec() {
        assert!(Rotate::new("a/b").into_wire().spec.is_none());
        let spec = Rotate::new("a/b").encoding(Encoding::Hex).into_wire().spec;
        assert_eq!(spec.unwrap().encoding.as_deref(), Some("hex"));
    }
}
