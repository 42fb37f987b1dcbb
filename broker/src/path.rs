//! Secret paths, validated at the edge.
//!
//! A path is `/`-separated segments of `[A-Za-z0-9._-]`, optionally followed
//! by `#key` to select one key of a map value (`app/db#password`). Anything
//! else — a leading `/`, `//`, `.` or `..` segments, `%`, NUL or other control
//! bytes — is refused before any decision is made, so policy and store only
//! ever see one spelling of each path.

use std::fmt;

/// The longest path accepted, key included.
pub const MAX_PATH_LEN: usize = 512;

/// A validated secret path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath {
    base: SecretName,
    key: Option<String>,
}

/// A validated base path, without `#key`: the only spelling of a path a
/// store takes ([`crate::store::SecretStore`]). It is made only by
/// validation ([`SecretName::parse`], or [`SecretPath::name`] of a path
/// already validated), so a store never sees an unchecked string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretName(String);

/// Why a path was refused. The messages are safe to show to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has a character outside [A-Za-z0-9._-/#]")]
    BadCharacter,
    #[error("path has an empty or malformed '#key'")]
    BadKey,
}

impl SecretPath {
    /// Parses and validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        let (base, key) = match raw.split_once('#') {
            Some((base, key)) => {
                if key.is_empty() || !key.bytes().all(is_name_byte) {
                    return Err(PathError::BadKey);
                }
                (base, Some(key.to_string()))
            }
            None => (raw, None),
        };
        for segment in base.split('/') {
            if segment.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(PathError::DotSegment);
            }
            if !segment.bytes().all(is_name_byte) {
                return Err(PathError::BadCharacter);
            }
        }
        Ok(Self {
            base: SecretName(base.to_string()),
            key,
        })
    }

    /// The path without its `#key`, as text (policy, logs, the wire).
    pub fn base(&self) -> &str {
        &self.base.0
    }

    /// The path without its `#key`: what the store is asked for.
    pub fn name(&self) -> &SecretName {
        &self.base
    }

    /// The selected key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The path without any key selector.
    pub fn without_key(&self) -> Self {
        Self {
            base: self.base.clone(),
            key: None,
        }
    }
}

impl SecretName {
    /// Validates `raw` as a base path: a [`SecretPath`] without `#key`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        let path = SecretPath::parse(raw)?;
        match path.key {
            Some(_) => Err(PathError::BadKey),
            None => Ok(path.base),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name for tests and benches, from a path they know is valid.
    ///
    /// # Panics
    /// When `raw` is not a valid base path.
    #[cfg(any(test, feature = "testing"))]
    pub fn valid(raw: &str) -> Self {
        Self::parse(raw).unwrap_or_else(|e| panic!("{raw:?} is not a valid base path: {e}"))
    }
}

// A name reads as the string it is wherever a `&str` is asked for (the
// stores' own maps and Vault's paths); only validation makes one.
impl std::ops::Deref for SecretName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretName({})", self.0)
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}#{key}", self.base),
            None => f.write_str(&self.base.0),
        }
    }
}

impl fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretPath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_keyed_paths() {
        let p = SecretPath::parse("app/db#password").unwrap();
        assert_eq!((p.base(), p.key()), ("app/db", Some("password")));
        assert_eq!(p.to_string(), "app/db#password");
        assert_eq!(SecretPath::parse("a.b/c_d-1").unwrap().key(), None);
    }

    #[test]
    fn a_name_is_a_path_without_a_key() {
        assert_eq!(SecretName::parse("app/db").unwrap().as_str(), "app/db");
        assert_eq!(SecretName::parse("app/db#password"), Err(PathError::BadKey));
        assert_eq!(SecretName::parse("app/../db"), Err(PathError::DotSegment));
        let path = SecretPath::parse("app/db#password").unwrap();
        assert_eq!(path.name(), &SecretName::parse("app/db").unwrap());
    }

    #[test]
    fn refuses_every_spelling_trick() {
        let cases = [
            ("", PathError::Empty),
            ("/app/db", PathError::EmptySegment),
            ("app//db", PathError::EmptySegment),
            ("app/db/", PathError::EmptySegment),
            ("app/../db", PathError::DotSegment),
            ("app/./db", PathError::DotSegment),
            ("..", PathError::DotSegment),
            ("app/%2e%2e/db", PathError::BadCharacter),
            ("app/d\0b", PathError::BadCharacter),
            ("app/d\nb", PathError::BadCharacter),
            ("app/d b", PathError::BadCharacter),
            ("app/dé", PathError::BadCharacter),
            ("app/db#", PathError::BadKey),
            ("app/db#a#b", PathError::BadKey),
            ("app/db#a/b", PathError::BadKey),
            // Tricks aimed at pattern matchers and at backends that decode.
            ("app\\db", PathError::BadCharacter),
            ("app/*", PathError::BadCharacter),
            ("app/d?", PathError::BadCharacter),
            ("app/{namespace}", PathError::BadCharacter),
            ("app/%00", PathError::BadCharacter),
            ("app/%2F..", PathError::BadCharacter),
            ("app/d\tb", PathError::BadCharacter),
            ("app/d\u{7f}b", PathError::BadCharacter),
            ("app\u{2215}db", PathError::BadCharacter),
            ("app/\u{ff0e}\u{ff0e}/db", PathError::BadCharacter),
            ("app/db/..", PathError::DotSegment),
            ("./app", PathError::DotSegment),
        ];
        for (raw, want) in cases {
            assert_eq!(SecretPath::parse(raw), Err(want), "{raw:?}");
        }
        assert_eq!(SecretPath::parse(&"a".repeat(513)), Err(PathError::TooLong));
    }
}
