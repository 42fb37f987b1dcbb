//! The embedded dev store: secrets in memory, optionally persisted to a file
//! sealed with AES-256-GCM (`ring`). No Vault needed.
//!
//! File layout: `COFFERDEV1` magic, a 12-byte random nonce, then the sealed
//! JSON document (magic as associated data). The key is 32 bytes, given as a
//! file (raw bytes or base64) or base64 in an environment variable.

use crate::path::SecretName;
use crate::swept::SweptMap;
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD};
use coffer_proto::{SecretBytes, SecretData};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{
    SecretStore, SecretWrite, StoreError, StoredSecret, Tenant, VersionChange, VersionInfo,
    VersionList,
};

const MAGIC: &[u8] = b"COFFERDEV1";

/// The environment variable that may hold the persistence key (base64).
pub const KEY_ENV: &str = "COFFER_DEV_STORE_KEY";

#[derive(Clone)]
struct Version {
    data: SecretData,
    content_type: String,
    created_at: SystemTime,
    labels: BTreeMap<String, String>,
    /// Soft-deleted: unreadable until undeleted.
    deleted: bool,
    /// Destroyed: the value is gone for good.
    destroyed: bool,
}

/// The in-memory store.
pub struct DevStore {
    secrets: Mutex<HashMap<String, Vec<Version>>>,
    watchers: Mutex<SweptMap<String, watch::Sender<u64>>>,
    persistence: Option<Persistence>,
    /// Serializes writers, so the file is written outside the `secrets`
    /// lock (and off the async workers) while no other write interleaves.
    writer: tokio::sync::Mutex<()>,
}

struct Persistence {
    path: PathBuf,
    key: LessSafeKey,
    rng: SystemRandom,
}

/// Why the dev store could not load or save its file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevStoreError {
    #[error("dev store key must be 32 bytes (raw or base64)")]
    BadKey,
    #[error("cannot read or write the dev store file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dev store file is corrupt or sealed with another key")]
    Unseal,
}

/// Parses a 32-byte key given raw or as base64 text.
pub fn parse_key(material: &[u8]) -> Result<Zeroizing<Vec<u8>>, DevStoreError> {
    if material.len() == 32 {
        return Ok(Zeroizing::new(material.to_vec()));
    }
    let text = std::str::from_utf8(material).map_err(|_| DevStoreError::BadKey)?;
    let decoded = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| DevStoreError::BadKey)?,
    );
    if decoded.len() != 32 {
        return Err(DevStoreError::BadKey);
    }
    Ok(decoded)
}

impl Default for DevStore {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl DevStore {
    /// A store that forgets everything when the process ends.
    pub fn in_memory() -> Self {
        Self {
            secrets: Mutex::default(),
            watchers: Mutex::default(),
            persistence: None,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// A store persisted to `path`, sealed with `key` (32 bytes). An existing
    /// file is loaded; a missing one is created on the first write.
    pub fn persistent(path: impl Into<PathBuf>, key: &[u8]) -> Result<Self, DevStoreError> {
        let path = path.into();
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| DevStoreError::BadKey)?,
        );
        let persistence = Persistence {
            path,
            key,
            rng: SystemRandom::new(),
        };
        let secrets = persistence.load()?;
        Ok(Self {
            secrets: Mutex::new(secrets),
            watchers: Mutex::default(),
            persistence: Some(persistence),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    fn lock_secrets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Version>>> {
        // Every critical section leaves the map whole; a panic elsewhere
        // cannot leave it half-written.
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to `versions` of `path` (empty: the current one),
    /// keeping memory and file in agreement: the change shows at once (it
    /// only ever hides a value) and is undone if the file cannot be written.
    async fn mark(
        &self,
        path: &str,
        versions: &[u64],
        change: impl Fn(&mut Version),
    ) -> Result<(), StoreError> {
        let _writing = self.writer.lock().await;
        let (before, sealed) = {
            let mut secrets = self.lock_secrets();
            let existing = secrets.get_mut(path).ok_or(StoreError::NotFound)?;
            let current = existing.len() as u64;
            let wanted: Vec<u64> = if versions.is_empty() {
                vec![current]
            } else {
                versions.to_vec()
            };
            if let Some(&bad) = wanted.iter().find(|&&n| n == 0 || n > current) {
                return Err(StoreError::VersionNotFound(bad));
            }
            let before = existing.clone();
            for n in wanted {
                // `n` is within 1..=len, checked above.
                if let Some(v) = usize::try_from(n - 1)
                    .ok()
                    .and_then(|i| existing.get_mut(i))
                {
                    change(v);
                }
            }
            (before, self.persistence.as_ref().map(|p| p.seal(&secrets)))
        };
        if let (Some(p), Some(sealed)) = (&self.persistence, sealed) {
            let file = p.path.clone();
            let written = match sealed {
                Ok(sealed) => tokio::task::spawn_blocking(move || sealed.write_to(&file))
                    .await
                    .map_err(|e| StoreError::Internal(e.to_string()))
                    .and_then(|r| r.map_err(|e| StoreError::Internal(e.to_string()))),
                Err(e) => Err(StoreError::Internal(e.to_string())),
            };
            if let Err(e) = written {
                self.lock_secrets().insert(path.to_string(), before);
                return Err(e);
            }
        }
        Ok(())
    }

    fn notify(&self, path: &str, version: u64) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        match watchers.get(path) {
            Some(tx) if tx.receiver_count() > 0 => {
                tx.send_replace(version);
            }
            Some(_) => {
                watchers.remove(path);
            }
            None => {}
        }
    }
}

impl DevStore {
    /// One version of `path` (`None`: the latest), copied out of the map.
    fn read(&self, path: &SecretName, version: Option<u64>) -> Result<StoredSecret, StoreError> {
        let secrets = self.lock_secrets();
        let versions = secrets.get(path.as_str()).ok_or(StoreError::NotFound)?;
        let number = version.unwrap_or(versions.len() as u64);
        let index = usize::try_from(number)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < versions.len())
            .ok_or(StoreError::VersionNotFound(number))?;
        let v = &versions[index];
        if v.deleted || v.destroyed {
            return Err(StoreError::VersionDeleted(number));
        }
        Ok(StoredSecret {
            version: number,
            data: v.data.clone(),
            content_type: v.content_type.clone(),
            created_at: v.created_at,
            ttl_hint: None,
            labels: v.labels.clone(),
        })
    }
}

#[async_trait]
impl SecretStore for DevStore {
    async fn get(
        &self,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.read(path, version)
    }

    /// No backend budget to share: [`DevStore::get`], without awaiting a
    /// second boxed future.
    async fn get_for(
        &self,
        _: Tenant<'_>,
        path: &SecretName,
        version: Option<u64>,
    ) -> Result<StoredSecret, StoreError> {
        self.read(path, version)
    }

    async fn put(&self, path: &SecretName, write: SecretWrite) -> Result<u64, StoreError> {
        let _writing = self.writer.lock().await;
        let (version, new, sealed) = {
            let mut secrets = self.lock_secrets();
            let current = secrets.get(path.as_str()).map_or(0, |v| v.len() as u64);
            if let Some(cas) = write.cas
                && cas != current
            {
                return Err(StoreError::CasMismatch { current });
            }
            // Labels belong to the secret, as Vault's custom_metadata does:
            // a write without labels keeps the last ones.
            let labels = match secrets.get(path.as_str()).and_then(|v| v.last()) {
                Some(last) if write.labels.is_empty() => last.labels.clone(),
                _ => write.labels,
            };
            let new = Version {
                data: write.data,
                content_type: write.content_type,
                created_at: SystemTime::now(),
                labels,
                deleted: false,
                destroyed: false,
            };
            // Seal the document as it will be, then take the new version
            // back out: readers see it only once it is on disk.
            let sealed = self.persistence.as_ref().map(|p| {
                secrets
                    .entry(path.to_string())
                    .or_default()
                    .push(new.clone());
                let sealed = p.seal(&secrets);
                if let Some(versions) = secrets.get_mut(path.as_str()) {
                    versions.pop();
                    if versions.is_empty() {
                        secrets.remove(path.as_str());
                    }
                }
                sealed
            });
            (current + 1, new, sealed)
        };
        if let (Some(p), Some(sealed)) = (&self.persistence, sealed) {
            let sealed = sealed.map_err(|e| StoreError::Internal(e.to_string()))?;
            let file = p.path.clone();
            // The fsync runs on the blocking pool; `writer` keeps other
            // writes out until it is done.
            tokio::task::spawn_blocking(move || sealed.write_to(&file))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
                .map_err(|e| StoreError::Internal(e.to_string()))?;
        }
        self.lock_secrets()
            .entry(path.to_string())
            .or_default()
            .push(new);
        self.notify(path, version);
        Ok(version)
    }

    async fn versions(&self, path: &SecretName) -> Result<(u64, Vec<VersionInfo>), StoreError> {
        let list = self.versions_with_labels(path).await?;
        Ok((list.current, list.versions))
    }

    async fn versions_with_labels(&self, path: &SecretName) -> Result<VersionList, StoreError> {
        let secrets = self.lock_secrets();
        let versions = secrets.get(path.as_str()).ok_or(StoreError::NotFound)?;
        let infos = versions
            .iter()
            .zip(1u64..)
            .map(|(v, n)| VersionInfo {
                version: n,
                created_at: v.created_at,
                deleted: v.deleted,
                destroyed: v.destroyed,
            })
            .collect();
        Ok(VersionList {
            current: versions.len() as u64,
            versions: infos,
            // Labels belong to the secret (see `put`): the last version's.
            labels: versions
                .last()
                .map(|v| v.labels.clone())
                .unwrap_or_default(),
        })
    }

    async fn change_versions(
        &self,
        path: &SecretName,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<(), StoreError> {
        match change {
            VersionChange::Delete => self.mark(path, versions, |v| v.deleted = true).await,
            VersionChange::Undelete => {
                self.mark(path, versions, |v| {
                    if !v.destroyed {
                        v.deleted = false;
                    }
                })
                .await
            }
            VersionChange::Destroy => {
                self.mark(path, versions, |v| {
                    v.destroyed = true;
                    // Dropping the old value zeroizes it.
                    v.data = SecretData::Bytes(SecretBytes::new(Vec::new()));
                })
                .await
            }
        }
    }

    async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let secrets = self.lock_secrets();
        let mut names: Vec<String> = secrets
            .keys()
            .filter_map(|path| path.strip_prefix(&prefix))
            .map(|rest| match rest.split_once('/') {
                Some((folder, _)) => format!("{folder}/"),
                None => rest.to_string(),
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn subscribe(&self, path: &SecretName) -> watch::Receiver<u64> {
        let current = self
            .lock_secrets()
            .get(path.as_str())
            .map_or(0, |v| v.len() as u64);
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watchers.get(path.as_str()) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(current);
        watchers.insert(path.to_string(), tx, |_, tx| tx.receiver_count() > 0);
        rx
    }
}

// The sealed document. Values serialize as byte arrays straight into a
// zeroizing buffer, so no intermediate string copy of a secret is made.
#[derive(Serialize, Deserialize)]
struct Document<V> {
    secrets: BTreeMap<String, Vec<V>>,
}

#[derive(Serialize)]
struct VersionOut<'a> {
    created_unix_ms: u64,
    content_type: &'a str,
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<&'a [u8]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<BTreeMap<&'a str, &'a [u8]>>,
    deleted: bool,
    destroyed: bool,
}

#[derive(Deserialize)]
struct VersionIn {
    created_unix_ms: u64,
    content_type: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    map: Option<BTreeMap<String, Vec<u8>>>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    destroyed: bool,
}

impl Persistence {
    fn io(&self, source: std::io::Error) -> DevStoreError {
        DevStoreError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn load(&self) -> Result<HashMap<String, Vec<Version>>, DevStoreError> {
        let sealed = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(self.io(e)),
        };
        let body = sealed.strip_prefix(MAGIC).ok_or(DevStoreError::Unseal)?;
        if body.len() < NONCE_LEN {
            return Err(DevStoreError::Unseal);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| DevStoreError::Unseal)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(MAGIC), &mut buffer)
            .map_err(|_| DevStoreError::Unseal)?;
        let doc: Document<VersionIn> =
            serde_json::from_slice(plain).map_err(|_| DevStoreError::Unseal)?;
        Ok(doc
            .secrets
            .into_iter()
            .map(|(path, versions)| {
                let versions = versions
                    .into_iter()
                    .map(|v| Version {
                        data: match (v.bytes, v.map) {
                            (_, Some(map)) => SecretData::Map(
                                map.into_iter()
                                    .map(|(k, v)| (k, SecretBytes::new(v)))
                                    .collect(),
                            ),
                            (bytes, None) => {
                                SecretData::Bytes(SecretBytes::new(bytes.unwrap_or_default()))
                            }
                        },
                        content_type: v.content_type,
                        created_at: UNIX_EPOCH + Duration::from_millis(v.created_unix_ms),
                        labels: v.labels,
                        deleted: v.deleted,
                        destroyed: v.destroyed,
                    })
                    .collect();
                (path, versions)
            })
            .collect())
    }

    /// Seals `secrets` in memory; no I/O (see [`Sealed::write_to`]).
    fn seal(&self, secrets: &HashMap<String, Vec<Version>>) -> Result<Sealed, DevStoreError> {
        let doc = Document {
            secrets: secrets
                .iter()
                .map(|(path, versions)| {
                    let versions = versions
                        .iter()
                        .map(|v| VersionOut {
                            created_unix_ms: v
                                .created_at
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            content_type: &v.content_type,
                            labels: &v.labels,
                            deleted: v.deleted,
                            destroyed: v.destroyed,
                            bytes: match &v.data {
                                SecretData::Bytes(b) => Some(b.expose()),
                                SecretData::Map(_) => None,
                            },
                            map: match &v.data {
                                SecretData::Bytes(_) => None,
                                SecretData::Map(m) => {
                                    Some(m.iter().map(|(k, v)| (k.as_str(), v.expose())).collect())
                                }
                            },
                        })
                        .collect();
                    (path.clone(), versions)
                })
                .collect(),
        };
        // Reserve generously up front so the buffer never reallocates and
        // leaves a stray copy of the plaintext behind.
        let estimate: usize = secrets
            .values()
            .flatten()
            .map(|v| v.data.size() * 4 + 256)
            .sum::<usize>()
            + 1024;
        let mut buffer = Zeroizing::new(Vec::with_capacity(estimate * 2));
        serde_json::to_writer(&mut *buffer, &doc).map_err(|e| self.io(e.into()))?;

        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| self.io(std::io::Error::other("no randomness")))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(MAGIC),
                &mut *buffer,
            )
            .map_err(|_| self.io(std::io::Error::other("seal failed")))?;

        Ok(Sealed { nonce, buffer })
    }
}

/// A sealed document, ready to be written.
struct Sealed {
    nonce: [u8; NONCE_LEN],
    buffer: Zeroizing<Vec<u8>>,
}

impl Sealed {
    /// Replaces `path` atomically with this document, fsynced. Blocking.
    fn write_to(&self, path: &Path) -> Result<(), DevStoreError> {
        let io = |source| DevStoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(MAGIC).map_err(io)?;
        tmp.write_all(&self.nonce).map_err(io)?;
        tmp.write_all(&self.buffer).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(value: &[u8]) -> SecretWrite {
        SecretWrite::new(SecretData::Bytes(value.into()), "text/plain")
    }

    #[tokio::test]
    async fn versions_grow_and_old_ones_stay_readable() {
        let store = DevStore::in_memory();
        assert_eq!(
            store
                .put(&SecretName::valid("a/b"), write(b"one"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .put(&SecretName::valid("a/b"), write(b"two"))
                .await
                .unwrap(),
            2
        );
        let current = store.get(&SecretName::valid("a/b"), None).await.unwrap();
        assert_eq!(
            (current.version, current.data),
            (2, SecretData::Bytes((&b"two"[..]).into()))
        );
        assert_eq!(
            store
                .get(&SecretName::valid("a/b"), Some(1))
                .await
                .unwrap()
                .data,
            SecretData::Bytes((&b"one"[..]).into())
        );
        assert!(matches!(
            store.get(&SecretName::valid("a/b"), Some(3)).await,
            Err(StoreError::VersionNotFound(3))
        ));
        assert!(matches!(
            store.get(&SecretName::valid("a/b"), Some(0)).await,
            Err(StoreError::VersionNotFound(0))
        ));
        assert!(matches!(
            store.get(&SecretName::valid("nope"), None).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn versions_come_with_the_secrets_labels() {
        let store = DevStore::in_memory();
        let mut labelled = write(b"one");
        labelled
            .labels
            .insert("coffer.rotate/length".into(), "40".into());
        store
            .put(&SecretName::valid("a/b"), labelled)
            .await
            .unwrap();
        // A write without labels keeps them.
        store
            .put(&SecretName::valid("a/b"), write(b"two"))
            .await
            .unwrap();
        let list = store
            .versions_with_labels(&SecretName::valid("a/b"))
            .await
            .unwrap();
        assert_eq!((list.current, list.versions.len()), (2, 2));
        assert_eq!(
            list.labels.get("coffer.rotate/length").map(String::as_str),
            Some("40")
        );
        assert!(matches!(
            store.versions_with_labels(&SecretName::valid("nope")).await,
            Err(StoreError::NotFound)
        ));
    }

    #[tokio::test]
    async fn cas_refuses_a_stale_writer() {
        let store = DevStore::in_memory();
        store
            .put(&SecretName::valid("a"), write(b"1"))
            .await
            .unwrap();
        let mut w = write(b"2");
        w.cas = Some(0);
        assert!(matches!(
            store.put(&SecretName::valid("a"), w).await,
            Err(StoreError::CasMismatch { current: 1 })
        ));
    }

    #[tokio::test]
    async fn subscribers_see_new_versions() {
        let store = DevStore::in_memory();
        let mut rx = store.subscribe(&SecretName::valid("a"));
        assert_eq!(*rx.borrow(), 0);
        store
            .put(&SecretName::valid("a"), write(b"1"))
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), 1);
    }

    #[tokio::test]
    async fn sealed_file_round_trips_and_holds_no_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.sealed");
        let key = [7u8; 32];
        {
            let store = DevStore::persistent(&file, &key).unwrap();
            store
                .put(&SecretName::valid("a/b"), write(b"canary-plaintext"))
                .await
                .unwrap();
        }
        let raw = std::fs::read(&file).unwrap();
        assert!(raw.starts_with(MAGIC));
        assert!(!raw.windows(6).any(|w| w == b"canary"));
        let store = DevStore::persistent(&file, &key).unwrap();
        assert_eq!(
            store
                .get(&SecretName::valid("a/b"), None)
                .await
                .unwrap()
                .data,
            SecretData::Bytes((&b"canary-plaintext"[..]).into())
        );
        assert!(matches!(
            DevStore::persistent(&file, &[8u8; 32]),
            Err(DevStoreError::Unseal)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_persisted_writes_stay_in_order_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store.sealed");
        let key = [7u8; 32];
        let store = std::sync::Arc::new(DevStore::persistent(&file, &key).unwrap());
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put(&SecretName::valid("a"), write(format!("v{i}").as_bytes()))
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut versions = Vec::new();
        for task in tasks {
            versions.push(task.await.unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
        let reloaded = DevStore::persistent(&file, &key).unwrap();
        assert_eq!(
            reloaded.versions(&SecretName::valid("a")).await.unwrap().0,
            8
        );
        for v in 1..=8 {
            assert_eq!(
                reloaded
                    .get(&SecretName::valid("a"), Some(v))
                    .await
                    .unwrap()
                    .data,
                store
                    .get(&SecretName::valid("a"), Some(v))
                    .await
                    .unwrap()
                    .data
            );
        }
    }

    #[tokio::test]
    async fn a_failed_save_leaves_nothing_readable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gone").join("store.sealed");
        let store = DevStore::persistent(&file, &[7u8; 32]).unwrap();
        assert!(matches!(
            store.put(&SecretName::valid("a"), write(b"1")).await,
            Err(StoreError::Internal(_))
        ));
        assert!(matches!(
            store.get(&SecretName::valid("a"), None).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(*store.subscribe(&SecretName::valid("a")).borrow(), 0);
    }

    #[test]
    fn keys_are_32_bytes_raw_or_base64() {
        assert!(parse_key(&[1u8; 32]).is_ok());
        assert!(parse_key(STANDARD.encode([1u8; 32]).as_bytes()).is_ok());
        assert!(parse_key(b"short").is_err());
    }
}
