//! Keys from a file (a JWKS document or PEM public keys), for air-gapped
//! clusters, reloaded when the file changes.
//!
//! The file is re-read at most once per check interval (and at most once a
//! second when a token names an unknown `kid`); it is re-parsed only when its
//! SHA-256 changed. A file that fails to read or parse leaves the last good
//! keys in place, so a half-written update cannot lock every workload out.
//! Checks read the file with `tokio::fs` (the blocking pool): a check due
//! during a verification runs in the background and the verification uses
//! the keys it has.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;

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
}

/// A key file, reloaded when it changes.
pub struct FileKeys {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    format: KeyFileFormat,
    interval: Duration,
    state: Mutex<State>,
    /// A background reload is under way; `current` starts no second one.
    reloading: AtomicBool,
    /// When the file was last read: milliseconds after `epoch`. Atomic, so
    /// that the due check on every cache hit takes no lock.
    checked_ms: AtomicU64,
    epoch: Instant,
    /// Bumped whenever the keys are replaced (see [`KeySource::generation`]).
    generation: AtomicU64,
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
            shared: Arc::new(Shared {
                path,
                format,
                interval,
                state: Mutex::new(State {
                    keys: Arc::new(keys),
                    digest,
                }),
                reloading: AtomicBool::new(false),
                checked_ms: AtomicU64::new(0),
                epoch: Instant::now(),
                generation: AtomicU64::new(0),
            }),
        })
    }
}

impl Shared {
    /// The keys now. When a check is due, the file is read in the
    /// background (on a runtime) and this call does not wait for it: the
    /// verifying request never blocks on the disk.
    fn current(self: &Arc<Self>) -> Arc<KeySet> {
        self.due_check();
        self.state.lock().keys.clone()
    }

    /// Milliseconds since `epoch`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When a check is due, reads the file in the background (on a
    /// runtime); this call does not wait for it. No lock is taken.
    fn due_check(self: &Arc<Self>) {
        let now = self.now_ms();
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.checked_ms.load(Ordering::Acquire)) >= interval
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.reloading.swap(true, Ordering::AcqRel)
        {
            self.checked_ms.store(now, Ordering::Release);
            let shared = Arc::clone(self);
            runtime.spawn(async move {
                shared.reload().await;
                shared.reloading.store(false, Ordering::Release);
            });
        }
    }

    /// Reads the file again unless it was read less than `at_least` ago.
    async fn check(&self, at_least: Duration) -> Arc<KeySet> {
        let now = self.now_ms();
        let at_least = u64::try_from(at_least.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(self.checked_ms.load(Ordering::Acquire)) < at_least {
            return self.state.lock().keys.clone();
        }
        self.checked_ms.store(now, Ordering::Release);
        self.reload().await
    }

    async fn reload(&self) -> Arc<KeySet> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "key file unreadable; keeping the last good keys");
                return self.state.lock().keys.clone();
            }
        };
        let digest = sha256(&bytes);
        if digest == self.state.lock().digest {
            return self.state.lock().keys.clone();
        }
        let parsed = parse(&bytes, self.format);
        let mut state = self.state.lock();
        match parsed {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "key file reloaded");
                state.keys = Arc::new(keys);
                state.digest = digest;
                // After the keys, under the lock: whoever reads the new
                // generation then reads the new keys.
                self.generation.fetch_add(1, Ordering::AcqRel);
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
        Some(self.shared.current())
    }

    fn generation(&self) -> Option<u64> {
        self.shared.due_check();
        Some(self.shared.generation.load(Ordering::Acquire))
    }

    async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        Some(
            self.shared
                .check(UNKNOWN_KID_INTERVAL.min(self.shared.interval))
                .await,
        )
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

    fn kid_of(signer: &DevSigner) -> String {
        let jwks: serde_json::Value = serde_json::from_str(&signer.jwks_json()).unwrap();
        jwks["keys"][0]["kid"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let a = DevSigner::generate("https://i").unwrap();
        let b = DevSigner::generate("https://i").unwrap();
        std::fs::write(&path, a.jwks_json()).unwrap();
        let keys = FileKeys::load(&path, KeyFileFormat::Jwks, Duration::ZERO).unwrap();
        assert!(keys.current().unwrap().contains_kid(&kid_of(&a)));

        std::fs::write(&path, b.jwks_json()).unwrap();
        let now = keys.refresh_for_unknown_kid().await.unwrap();
        assert!(now.contains_kid(&kid_of(&b)) && !now.contains_kid(&kid_of(&a)));

        std::fs::write(&path, "{ not json").unwrap();
        keys.refresh_for_unknown_kid().await;
        assert!(keys.current().unwrap().contains_kid(&kid_of(&b)));
    }

    #[tokio::test]
    async fn a_due_check_reloads_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let a = DevSigner::generate("https://i").unwrap();
        let b = DevSigner::generate("https://i").unwrap();
        std::fs::write(&path, a.jwks_json()).unwrap();
        let keys = FileKeys::load(&path, KeyFileFormat::Jwks, Duration::ZERO).unwrap();
        std::fs::write(&path, b.jwks_json()).unwrap();
        let kid = kid_of(&b);
        // The first call answers at once with what it has; a later one sees
        // the reloaded file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !keys.current().unwrap().contains_kid(&kid) {
            assert!(Instant::now() < deadline, "the file was never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A cached answer's key check reads no set while the generation
    /// stays; a reload bumps it, and the key is searched again: kept when
    /// still there, dropped when gone.
    #[tokio::test]
    async fn a_reload_bumps_the_generation_and_the_key_is_searched_again() {
        use crate::auth::jwt::{JwtVerifier, VerifierConfig};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (a, b) = (
            DevSigner::generate("https://i").unwrap(),
            DevSigner::generate("https://i").unwrap(),
        );
        let both = |x: &DevSigner, y: &DevSigner| {
            let mut j: serde_json::Value = serde_json::from_str(&x.jwks_json()).unwrap();
            let more: serde_json::Value = serde_json::from_str(&y.jwks_json()).unwrap();
            j["keys"]
                .as_array_mut()
                .unwrap()
                .extend(more["keys"].as_array().unwrap().iter().cloned());
            j.to_string()
        };
        std::fs::write(&path, a.jwks_json()).unwrap();
        let keys = Arc::new(FileKeys::load(&path, KeyFileFormat::Jwks, Duration::ZERO).unwrap());
        let verifier =
            JwtVerifier::with_source(VerifierConfig::new("https://i", "coffer"), keys.clone());
        let token = a
            .mint("coffer", "shop", "web", None, Duration::from_secs(600))
            .unwrap();
        let binding = verifier.verify(&token).unwrap().key.unwrap();
        let first = keys.generation().unwrap();
        assert!(binding.is_current());
        // Another key added: the generation moves, the key is still there.
        std::fs::write(&path, both(&a, &b)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while keys.generation() == Some(first) {
            assert!(Instant::now() < deadline, "the file was never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(binding.is_current());
        // The key removed: found missing at the next check after the reload.
        let second = keys.generation().unwrap();
        std::fs::write(&path, b.jwks_json()).unwrap();
        while keys.generation() == Some(second) {
            assert!(Instant::now() < deadline, "the file was never reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!binding.is_current());
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
