//! The token a client presents: a fixed one, or a file re-read as the
//! kubelet refreshes it.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use secrecy::{ExposeSecret, SecretString};

use crate::Error;

/// Where a client gets the token it presents to the broker.
///
/// A file source re-reads the file at most every [`TokenSource::REREAD`]
/// (the kubelet refreshes projected tokens well before they expire) and keeps
/// the last good token if the file briefly vanishes, as kube-rs does.
#[derive(Clone)]
pub struct TokenSource(Arc<Source>);

enum Source {
    Static(SecretString),
    File {
        path: PathBuf,
        cache: Mutex<Option<(SecretString, Instant)>>,
    },
}

impl TokenSource {
    /// The default path of the Coffer projected token volume.
    pub const PROJECTED_PATH: &'static str = "/var/run/secrets/coffer/token";
    /// How often a token file is read again.
    pub const REREAD: Duration = Duration::from_secs(10);

    /// The token the kubelet projects at [`Self::PROJECTED_PATH`].
    pub fn projected() -> Self {
        Self::file(Self::PROJECTED_PATH)
    }

    /// A token kept in a file.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self(Arc::new(Source::File {
            path: path.as_ref().to_path_buf(),
            cache: Mutex::new(None),
        }))
    }

    /// A fixed token, e.g. one handed over by another system.
    pub fn from_static(token: impl Into<String>) -> Self {
        Self(Arc::new(Source::Static(SecretString::from(token.into()))))
    }

    /// The current token.
    pub fn token(&self) -> Result<SecretString, Error> {
        match &*self.0 {
            Source::Static(token) => Ok(token.clone()),
            Source::File { path, cache } => {
                let mut cache = cache.lock();
                if let Some((token, read_at)) = cache.as_ref()
                    && read_at.elapsed() < Self::REREAD
                {
                    return Ok(token.clone());
                }
                match read_token(path) {
                    Ok(token) => {
                        *cache = Some((token.clone(), Instant::now()));
                        Ok(token)
                    }
                    Err(source) => match cache.as_ref() {
                        Some((token, _)) => {
                            tracing::warn!(path = %path.display(), error = %source, "token file unreadable; keeping the last good token");
                            Ok(token.clone())
                        }
                        None => Err(Error::Token {
                            path: path.clone(),
                            source,
                        }),
                    },
                }
            }
        }
    }
}

impl TokenSource {
    /// The broker refused the token (`UNAUTHENTICATED`, e.g. a watch ended
    /// at the token's expiry): read the file again on next use rather than
    /// presenting the same token until [`Self::REREAD`] has passed. The last
    /// good token is kept in case the file cannot be read. Returns whether
    /// there is a file to read again (a fixed token cannot change).
    pub(crate) fn refused(&self) -> bool {
        let Source::File { cache, .. } = &*self.0 else {
            return false;
        };
        let mut cache = cache.lock();
        if let Some((_, read_at)) = cache.as_mut()
            && let Some(stale) = Instant::now().checked_sub(Self::REREAD)
        {
            *read_at = stale;
        }
        true
    }
}

fn read_token(path: &Path) -> std::io::Result<SecretString> {
    let raw = SecretString::from(std::fs::read_to_string(path)?);
    let trimmed = raw.expose_secret().trim();
    if trimmed.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "token file is empty",
        ));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Source::Static(_) => f.write_str("TokenSource::Static([REDACTED])"),
            Source::File { path, .. } => write!(f, "TokenSource::File({})", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_keeps_the_last_good_token_when_the_file_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-1\n").unwrap();
        let source = TokenSource::file(&path);
        assert_eq!(source.token().unwrap().expose_secret(), "tok-1");
        std::fs::remove_file(&path).unwrap();
        // Force a re-read by ageing the cache.
        if let Source::File { cache, .. } = &*source.0 {
            let mut c = cache.lock();
            c.as_mut().unwrap().1 = Instant::now() - TokenSource::REREAD * 2;
        }
        assert_eq!(source.token().unwrap().expose_secret(), "tok-1");
    }

    #[test]
    fn a_refused_token_is_read_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-1\n").unwrap();
        let source = TokenSource::file(&path);
        assert_eq!(source.token().unwrap().expose_secret(), "tok-1");
        std::fs::write(&path, "tok-2\n").unwrap();
        assert_eq!(source.token().unwrap().expose_secret(), "tok-1");
        source.refused();
        assert_eq!(source.token().unwrap().expose_secret(), "tok-2");
    }

    #[test]
    fn missing_file_without_a_cached_token_is_an_error() {
        let source = TokenSource::file("/nonexistent/coffer/token");
        assert!(matches!(source.token(), Err(Error::Token { .. })));
    }

    #[test]
    fn debug_redacts_static_tokens() {
        let printed = format!("{:?}", TokenSource::from_static("eyJcanary"));
        assert!(!printed.contains("canary"));
    }
}
