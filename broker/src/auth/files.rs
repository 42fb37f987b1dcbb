//! Keys from a file (a JWKS document or PEM public keys), for air-gapped
//! clusters, reloaded when the file changes.
//!
//! The file is re-read at most once per check interval (and at most once a
//! second when a token names an unknown `kid`); it is re-parsed only when its
//! SHA-256 changed. A file that fails to read or parse leaves the last good
//! keys in place, so a half-written update cannot lock every workload out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use async_trait::async_trait;

use super::jwt::{KeySet, KeySetError, KeySource};

/// The default interval between checks of the file.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Unknown `kid`s trigger a check at most this often.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);

/// How the file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileFormat {
    /// A JWKS document (`{"keys": [...]}`).
    Jwks,
    /// PEM `PUBLIC KEY` blocks.
    Pem,
}

/// Why the key file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: KeySetError },
}

struct State {
    keys: Arc<KeySet>,
    digest: [u8; 32],
    checked: Instant,
}

/// A key file, reloaded when it changes.
pub struct FileKeys {
    path: PathBuf,
    format: KeyFileFormat,
    interval: Duration,
    state: Mutex<State>,
}

impl FileKeys {
    /// Loads `path` now; an unreadable or invalid file is an error at start.
    pub fn load(
        path: impl Into<PathBuf>,
        format: KeyFileFormat,
        interval: Duration,
    ) -> Result<Self, KeyFileError> {
        let path = path.into();
        let (keys, digest) = read(&path, format)?;
        Ok(Self {
            path,
            format,
            interval,
            state: Mutex::new(State {
                keys: Arc::new(keys),
                digest,
                checked: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // State is replaced whole; a panic mid-update cannot leave it torn.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check(&self, at_least: Duration) -> Arc<KeySet> {
        let mut state = self.lock();
        if state.checked.elapsed() < at_least {
            return state.keys.clone();
        }
        state.checked = Instant::now();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "key file unreadable; keeping the last good keys");
                return state.keys.clone();
            }
        };
        let digest = sha256(&bytes);
        if digest == state.digest {
            return state.keys.clone();
        }
        match parse(&bytes, self.format) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "key file reloaded");
                state.keys = Arc::new(keys);
                state.digest = digest;
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "key file invalid; keeping the last good keys");
            }
        }
        state.keys.clone()
    }
}

#[async_trait]
impl KeySource for FileKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        Some(self.check(self.interval))
    }

    async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        Some(self.check(UNKNOWN_KID_INTERVAL.min(self.interval)))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn parse(bytes: &[u8], format: KeyFileFormat) -> Result<KeySet, KeySetError> {
    match format {
        KeyFileFormat::Jwks => KeySet::from_jwks_json(bytes),
        KeyFileFormat::Pem => KeySet::from_pem(bytes),
    }
}

fn read(path: &Path, format: KeyFileFormat) -> Result<(KeySet, [u8; 32]), KeyFileError> {
    let bytes = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let keys = parse(&bytes, format).map_err(|source| KeyFileError::Parse {
        path: path.to_owned(),
        source,
    })?;
    Ok((keys, sha256(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::signer::DevSigner;

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let a = DevSigner::generate("https://i").unwrap();
        let b = DevSigner::generate("https://i").unwrap();
        std::fs::write(&path, a.jwks_json()).unwrap();
        let keys = FileKeys::load(&path, KeyFileFormat::Jwks, Duration::ZERO).unwrap();
        let kid_of = |s: &DevSigner| {
            let jwks: serde_json::Value = serde_json::from_str(&s.jwks_json()).unwrap();
            jwks["keys"][0]["kid"].as_str().unwrap().to_string()
        };
        assert!(keys.current().unwrap().contains_kid(&kid_of(&a)));

        std::fs::write(&path, b.jwks_json()).unwrap();
        let now = keys.current().unwrap();
        assert!(now.contains_kid(&kid_of(&b)) && !now.contains_kid(&kid_of(&a)));

        std::fs::write(&path, "{ not json").unwrap();
        assert!(keys.current().unwrap().contains_kid(&kid_of(&b)));
    }

    #[test]
    fn an_invalid_file_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.pem");
        std::fs::write(&path, "nothing here").unwrap();
        assert!(matches!(
            FileKeys::load(&path, KeyFileFormat::Pem, DEFAULT_CHECK_INTERVAL),
            Err(KeyFileError::Parse { .. })
        ));
    }
}
