//! The read-through cache: values, recent "not found" answers and the
//! reads in flight, all behind one lock, so that a read deciding whether to
//! join a flight, start one or take the cache sees one consistent state.
//!
//! * Concurrent reads of the same path and version make one Vault call
//!   (single-flight); the result is cached for `cache.ttl` in zeroizing
//!   buffers, the cache bounded by `cache.maxBytes`.
//! * While Vault is unreachable, cached values are served until they are
//!   `cache.maxStaleness` old.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;

use super::config::CacheConfig;
use crate::store::{StoreError, StoredSecret};

/// A path and a version (`None`: the latest).
pub(super) type CacheKey = (String, Option<u64>);

/// A Vault read that several callers may await.
pub(super) type SharedRead = Shared<BoxFuture<'static, Result<StoredSecret, Arc<StoreError>>>>;

/// What the cache answers a read.
pub(super) enum Lookup {
    /// A fresh value.
    Hit(StoredSecret),
    /// A recent "not found".
    Missing(StoreError),
    /// Nothing known: `joining` if a read of the key is in flight.
    Miss { joining: bool },
}

/// A read's way to its value once it decided to go to Vault.
pub(super) enum Flight {
    /// A flight ended meanwhile and left its value.
    Landed(StoredSecret),
    /// The read in flight to await (joined or just started).
    Read(SharedRead),
}

pub(super) struct ReadCache {
    ttl: Duration,
    max_staleness: Duration,
    state: Mutex<State>,
}

struct State {
    values: Cache,
    missing: NegativeCache,
    inflight: HashMap<CacheKey, SharedRead>,
}

impl ReadCache {
    pub(super) fn new(config: &CacheConfig) -> Self {
        Self {
            ttl: config.ttl,
            max_staleness: config.max_staleness,
            state: Mutex::new(State {
                values: Cache::new(config.max_bytes),
                missing: NegativeCache::new(config.negative_ttl, config.max_negative_entries),
                inflight: HashMap::new(),
            }),
        }
    }

    /// How long a read value is served without asking Vault again.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A fresh value, a recent "not found", or neither.
    pub(super) fn lookup(&self, key: &CacheKey) -> Lookup {
        let mut state = self.state.lock();
        if let Some(hit) = state.values.fresh(key, self.ttl) {
            return Lookup::Hit(hit);
        }
        if let Some(missing) = state.missing.get(key) {
            return Lookup::Missing(missing);
        }
        Lookup::Miss {
            joining: state.inflight.contains_key(key),
        }
    }

    /// Joins the read of `key` in flight, or starts one with `start`. A
    /// flight that ended since [`Self::lookup`] left its value in the cache
    /// before it left the flights: that value is taken rather than Vault
    /// read a second time.
    pub(super) fn fly(&self, key: &CacheKey, start: impl FnOnce() -> SharedRead) -> Flight {
        let mut state = self.state.lock();
        if !state.inflight.contains_key(key)
            && let Some(hit) = state.values.fresh(key, self.ttl)
        {
            return Flight::Landed(hit);
        }
        Flight::Read(
            state
                .inflight
                .entry(key.clone())
                .or_insert_with(start)
                .clone(),
        )
    }

    /// Keeps what a flight brought back: the value (also as the latest if
    /// `latest`), or a "not found" if `remember_missing`.
    pub(super) fn keep(
        &self,
        key: &CacheKey,
        result: &Result<StoredSecret, StoreError>,
        latest: bool,
        remember_missing: bool,
    ) {
        let mut state = self.state.lock();
        match result {
            Ok(secret) => {
                state
                    .values
                    .insert((key.0.clone(), Some(secret.version)), secret.clone());
                if latest {
                    state.values.insert((key.0.clone(), None), secret.clone());
                }
            }
            Err(e @ (StoreError::NotFound | StoreError::VersionNotFound(_)))
                if remember_missing =>
            {
                state.missing.insert(key.clone(), e.clone());
            }
            Err(_) => {}
        }
    }

    /// The flight of `key` is over.
    pub(super) fn land(&self, key: &CacheKey) {
        self.state.lock().inflight.remove(key);
    }

    /// A cached value no older than `cache.maxStaleness`, fresh or not:
    /// what is served while Vault is unavailable.
    pub(super) fn stale(&self, key: &CacheKey) -> Option<StoredSecret> {
        self.state.lock().values.stale(key, self.max_staleness)
    }

    /// Forgets everything cached of `path` (it was written or changed).
    pub(super) fn forget(&self, path: &str) {
        let mut state = self.state.lock();
        state.values.remove_path(path);
        state.missing.remove_path(path);
    }

    /// `version` of `path` exists: an older latest is no longer fresh, and
    /// "not found" answers of the path are void.
    pub(super) fn superseded(&self, path: &str, version: u64) {
        let mut state = self.state.lock();
        state.values.invalidate_older_latest(path, version);
        state.missing.remove_path(path);
    }
}

/// Recent "not found" answers, each kept for `ttl`, at most `max` of them.
struct NegativeCache {
    entries: HashMap<CacheKey, (Instant, StoreError)>,
    ttl: Duration,
    max: usize,
}

impl NegativeCache {
    fn new(ttl: Duration, max: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            max,
        }
    }

    fn get(&mut self, key: &CacheKey) -> Option<StoreError> {
        let (at, error) = self.entries.get(key)?;
        if at.elapsed() < self.ttl {
            return Some(error.clone());
        }
        self.entries.remove(key);
        None
    }

    fn insert(&mut self, key: CacheKey, error: StoreError) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.max {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        // Still full of live entries: not remembering is only slower.
        if self.entries.len() < self.max {
            self.entries.insert(key, (Instant::now(), error));
        }
    }

    fn remove_path(&mut self, path: &str) {
        self.entries.retain(|(p, _), _| p != path);
    }
}

/// Cached secrets, bounded in bytes, least recently used evicted first.
struct Cache {
    entries: HashMap<CacheKey, Entry>,
    bytes: usize,
    max_bytes: usize,
    tick: u64,
}

struct Entry {
    secret: StoredSecret,
    fetched: Instant,
    used: u64,
    size: usize,
    /// A newer version exists: not fresh, but still good as a stale fallback.
    superseded: bool,
}

impl Cache {
    fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            max_bytes,
            tick: 0,
        }
    }

    fn touch(
        &mut self,
        key: &CacheKey,
        max_age: Duration,
        fresh_only: bool,
    ) -> Option<StoredSecret> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        if entry.fetched.elapsed() > max_age || (fresh_only && entry.superseded) {
            return None;
        }
        entry.used = tick;
        Some(entry.secret.clone())
    }

    fn fresh(&mut self, key: &CacheKey, ttl: Duration) -> Option<StoredSecret> {
        if ttl.is_zero() {
            return None;
        }
        self.touch(key, ttl, true)
    }

    fn stale(&mut self, key: &CacheKey, max_staleness: Duration) -> Option<StoredSecret> {
        self.touch(key, max_staleness, false)
    }

    fn insert(&mut self, key: CacheKey, secret: StoredSecret) {
        let size = secret.data.size() + key.0.len() + 64;
        self.remove(&key);
        if size > self.max_bytes {
            return;
        }
        while self.bytes + size > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        self.bytes += size;
        self.entries.insert(
            key,
            Entry {
                secret,
                fetched: Instant::now(),
                used: self.tick,
                size,
                superseded: false,
            },
        );
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= old.size;
        }
    }

    fn remove_path(&mut self, path: &str) {
        let keys: Vec<CacheKey> = self
            .entries
            .keys()
            .filter(|(p, _)| p == path)
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    fn invalidate_older_latest(&mut self, path: &str, version: u64) {
        if let Some(entry) = self.entries.get_mut(&(path.to_string(), None))
            && entry.secret.version < version
        {
            entry.superseded = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::UNIX_EPOCH};

    use coffer_proto::{SecretBytes, SecretData};

    use super::*;

    fn secret(version: u64, bytes: usize) -> StoredSecret {
        StoredSecret {
            version,
            data: SecretData::Bytes(SecretBytes::new(vec![b'x'; bytes])),
            content_type: String::new(),
            created_at: UNIX_EPOCH,
            ttl_hint: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn the_cache_stays_under_its_byte_bound_and_evicts_the_least_recently_used() {
        let mut cache = Cache::new(1000);
        cache.insert(("a".into(), None), secret(1, 300));
        cache.insert(("b".into(), None), secret(1, 300));
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
        cache.insert(("c".into(), None), secret(1, 300));
        assert!(cache.bytes <= 1000);
        assert!(
            cache
                .fresh(&("b".into(), None), Duration::from_secs(60))
                .is_none()
        );
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
        cache.insert(("huge".into(), None), secret(1, 5000));
        assert!(
            cache
                .fresh(&("huge".into(), None), Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn a_not_found_is_remembered_only_when_asked_to() {
        let config = CacheConfig::default();
        let cache = ReadCache::new(&config);
        let key: CacheKey = ("a".into(), Some(3));
        cache.keep(&key, &Err(StoreError::VersionNotFound(3)), false, false);
        assert!(matches!(cache.lookup(&key), Lookup::Miss { .. }));
        cache.keep(&key, &Err(StoreError::VersionNotFound(3)), false, true);
        assert!(matches!(cache.lookup(&key), Lookup::Missing(_)));
    }

    #[test]
    fn a_superseded_latest_is_stale_but_not_fresh() {
        let mut cache = Cache::new(10_000);
        cache.insert(("a".into(), None), secret(1, 10));
        cache.invalidate_older_latest("a", 2);
        assert!(
            cache
                .fresh(&("a".into(), None), Duration::from_secs(60))
                .is_none()
        );
        assert!(
            cache
                .stale(&("a".into(), None), Duration::from_secs(60))
                .is_some()
        );
    }
}
