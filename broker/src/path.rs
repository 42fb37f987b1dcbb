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
    base: String,
    key: Option<String>,
}

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
            base: base.to_string(),
            key,
        })
    }

    /// The path without its `#key`: what the store is asked for.
    pub fn base(&self) -> &str {
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

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}#{key}", self.base),
            None => f.write_str(&self.base),
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
