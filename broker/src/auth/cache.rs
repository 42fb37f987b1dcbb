//! The verification cache: a sidecar presents the same token on every call,
//! so the signature check (the RSA or ECDSA cost) is paid once per token.
//!
//! Entries are keyed by the SHA-256 of the token's bytes: the cache never
//! holds a token in clear, so a memory dump of the cache yields no
//! credential. An entry lives until the token's `exp` (or the shorter time
//! its authenticator allows) and the cache is bounded by LRU eviction.
//! An entry is also dropped once the key that verified it has left its
//! issuer's key set (rotated out of a JWKS file or an OIDC issuer's set), so
//! removing a key revokes every token it signed at the next call.
//! Failures are never cached here: a token that failed for want of keys may
//! pass once the keys arrive (TokenReview keeps its own short negative cache).
//! The cache is split in up to [`CACHE_SHARDS`] LRUs chosen by the digest's
//! first byte, so lookups from several cores do not queue on one lock; the
//! bound is split between them (the total never exceeds the capacity).

use std::{num::NonZeroUsize, sync::Arc};

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};

use super::{AuthError, Authenticator, BearerToken, Verified, jwt::unix_now};

/// The default number of cached verifications.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// How many independently locked LRUs the cache is split into.
pub const CACHE_SHARDS: usize = 16;

/// The SHA-256 of a token: how caches name a token without holding it.
pub type TokenDigest = [u8; 32];

/// One shard: answers by token digest, least recently used first out.
type Shard = LruCache<TokenDigest, Arc<Verified>>;

/// Wraps an authenticator with a bounded cache of positive answers.
pub struct CachingAuthenticator {
    inner: Arc<dyn Authenticator>,
    shards: Box<[Mutex<Shard>]>,
}

impl CachingAuthenticator {
    /// Caches up to `capacity` answers of `inner`.
    pub fn new(inner: Arc<dyn Authenticator>, capacity: NonZeroUsize) -> Self {
        let shards = capacity.get().min(CACHE_SHARDS);
        // At least one entry per shard: `shards <= capacity`.
        let per_shard = NonZeroUsize::new(capacity.get() / shards).unwrap_or(NonZeroUsize::MIN);
        Self {
            inner,
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        }
    }

    /// How many answers are cached now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shard that holds `digest` (a SHA-256: its bytes are uniform).
    fn lock(&self, digest: &TokenDigest) -> MutexGuard<'_, Shard> {
        self.shards[usize::from(digest[0]) % self.shards.len()].lock()
    }

    fn lookup(&self, digest: &TokenDigest, now: u64) -> Option<Arc<Verified>> {
        let hit = {
            let mut cache = self.lock(digest);
            match cache.get(digest) {
                Some(hit) if hit.expires_at > now => Arc::clone(hit),
                Some(_) => {
                    cache.pop(digest);
                    return None;
                }
                None => return None,
            }
        };
        // Asked outside the cache's lock: a key source may read its file.
        if hit.key.as_ref().is_some_and(|key| !key.is_current()) {
            tracing::info!(
                issuer = %hit.identity.issuer,
                "cached verification dropped: its key left the key set"
            );
            self.lock(digest).pop(digest);
            return None;
        }
        Some(hit)
    }
}

/// The SHA-256 of `token`'s bytes.
pub(crate) fn token_digest(token: &BearerToken) -> TokenDigest {
    digest_bytes(token.expose().as_bytes())
}

/// The SHA-256 of a token's bytes.
pub(crate) fn digest_bytes(token: &[u8]) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[async_trait]
impl Authenticator for CachingAuthenticator {
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        self.authenticate_shared(token)
            .await
            .map(|verified| Verified::clone(&verified))
    }

    async fn authenticate_shared(&self, token: &BearerToken) -> Result<Arc<Verified>, AuthError> {
        self.authenticate_digested(token, &token_digest(token))
            .await
    }

    async fn authenticate_digested(
        &self,
        token: &BearerToken,
        key: &TokenDigest,
    ) -> Result<Arc<Verified>, AuthError> {
        let key = *key;
        if let Some(hit) = self.lookup(&key, unix_now()) {
            crate::metrics::auth_cache(true);
            return Ok(hit);
        }
        crate::metrics::auth_cache(false);
        let verified = Arc::new(self.inner.authenticate(token).await?);
        if verified.expires_at > unix_now() {
            self.lock(&key).put(key, Arc::clone(&verified));
        }
        Ok(verified)
    }

    fn cached(&self, digest: &TokenDigest) -> Option<Arc<Verified>> {
        let hit = self.lookup(digest, unix_now());
        if hit.is_some() {
            crate::metrics::auth_cache(true);
        }
        hit
    }

    fn issuers(&self) -> Vec<String> {
        self.inner.issuers()
    }

    fn forget(&self, digest: &TokenDigest) {
        self.lock(digest).pop(digest);
        self.inner.forget(digest);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::auth::WorkloadIdentity;

    /// Counts calls; answers with a fixed expiry.
    struct Counting {
        calls: AtomicUsize,
        expires_at: u64,
    }

    #[async_trait]
    impl Authenticator for Counting {
        fn issuers(&self) -> Vec<String> {
            vec!["i".into()]
        }
        async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if token.expose() == "bad" {
                return Err(AuthError::BadSignature);
            }
            Ok(Verified {
                identity: WorkloadIdentity {
                    issuer: "i".into(),
                    namespace: "ns".into(),
                    service_account: token.expose().into(),
                    service_account_uid: None,
                    pod_name: None,
                    pod_uid: None,
                },
                expires_at: self.expires_at,
                key: None,
                token_exp: Some(self.expires_at),
            })
        }
    }

    fn cached(expires_at: u64, capacity: usize) -> (Arc<Counting>, CachingAuthenticator) {
        let inner = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            expires_at,
        });
        let cache = CachingAuthenticator::new(inner.clone(), NonZeroUsize::new(capacity).unwrap());
        (inner, cache)
    }

    #[tokio::test]
    async fn a_verified_token_is_verified_once() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        for _ in 0..5 {
            let id = cache.authenticate(&BearerToken::new("web")).await.unwrap();
            assert_eq!(id.identity.service_account, "web");
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_miss_given_its_header_digest_is_kept_under_it_and_found_by_it() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        let header = "Bearer web";
        let token = BearerToken::from_header(header).unwrap();
        let digest = BearerToken::digest_of_header(header.as_bytes()).unwrap();
        assert!(cache.cached(&digest).is_none());
        let verified = cache.authenticate_digested(&token, &digest).await.unwrap();
        // The next call with that header is a hit, without verifying again.
        let hit = cache.cached(&digest).unwrap();
        assert!(Arc::ptr_eq(&verified, &hit));
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        // A failed verification is still not kept.
        let bad = BearerToken::from_header("Bearer bad").unwrap();
        let bad_digest = BearerToken::digest_of_header(b"Bearer bad").unwrap();
        assert!(
            cache
                .authenticate_digested(&bad, &bad_digest)
                .await
                .is_err()
        );
        assert!(cache.cached(&bad_digest).is_none());
    }

    #[tokio::test]
    async fn a_hit_shares_the_cached_answer_instead_of_copying_it() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        let token = BearerToken::new("web");
        let first = cache.authenticate_shared(&token).await.unwrap();
        let again = cache.authenticate_shared(&token).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // The copying form answers the same.
        let copied = cache.authenticate(&token).await.unwrap();
        assert_eq!(copied.identity, first.identity);
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_digest_finds_only_a_verified_unexpired_token() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        let (web, bad) = (BearerToken::new("web"), BearerToken::new("bad"));
        assert!(
            cache.cached(&token_digest(&web)).is_none(),
            "not verified yet"
        );
        let verified = cache.authenticate_shared(&web).await.unwrap();
        let hit = cache.cached(&token_digest(&web)).expect("a hit");
        assert!(Arc::ptr_eq(&hit, &verified));
        assert!(cache.authenticate_shared(&bad).await.is_err());
        assert!(
            cache.cached(&token_digest(&bad)).is_none(),
            "failures are not cached"
        );
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);

        let (_, expired) = cached(unix_now().saturating_sub(1), 8);
        expired.authenticate_shared(&web).await.unwrap();
        assert!(expired.cached(&token_digest(&web)).is_none());
    }

    #[tokio::test]
    async fn a_forgotten_token_is_verified_again_and_others_stay_cached() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        let (web, api) = (BearerToken::new("web"), BearerToken::new("api"));
        cache.authenticate_shared(&web).await.unwrap();
        cache.authenticate_shared(&api).await.unwrap();
        cache.forget(&token_digest(&web));
        cache.authenticate_shared(&web).await.unwrap();
        cache.authenticate_shared(&api).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "web twice, api once");
    }

    #[tokio::test]
    async fn failures_and_expired_answers_are_not_cached() {
        let (inner, cache) = cached(unix_now() + 600, 8);
        for _ in 0..3 {
            assert!(cache.authenticate(&BearerToken::new("bad")).await.is_err());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);

        let (inner, cache) = cached(unix_now().saturating_sub(1), 8);
        for _ in 0..3 {
            cache.authenticate(&BearerToken::new("web")).await.unwrap();
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn an_answer_is_dropped_when_its_key_leaves_the_set() {
        use crate::auth::{
            files::{FileKeys, KeyFileFormat},
            jwt::{JwtVerifier, VerifierConfig},
            signer::DevSigner,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let (old, new) = (
            DevSigner::generate("https://i").unwrap(),
            DevSigner::generate("https://i").unwrap(),
        );
        std::fs::write(&path, old.jwks_json()).unwrap();
        let keys = FileKeys::load(&path, KeyFileFormat::Jwks, std::time::Duration::ZERO).unwrap();
        let verifier =
            JwtVerifier::with_source(VerifierConfig::new("https://i", "coffer"), Arc::new(keys));
        let cache = CachingAuthenticator::new(Arc::new(verifier), NonZeroUsize::new(8).unwrap());
        let token = BearerToken::new(
            old.mint(
                "coffer",
                "shop",
                "web",
                None,
                std::time::Duration::from_secs(600),
            )
            .unwrap(),
        );
        cache.authenticate(&token).await.unwrap();
        assert_eq!(cache.len(), 1);
        std::fs::write(&path, new.jwks_json()).unwrap();
        // The due check reloads the file in the background (auth/files.rs):
        // the key leaves the set within a few calls, and so does the answer.
        let mut result = cache.authenticate(&token).await.map(|v| v.identity);
        for _ in 0..200 {
            if result.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            result = cache.authenticate(&token).await.map(|v| v.identity);
        }
        assert_eq!(result, Err(AuthError::UnknownKey));
        assert!(cache.is_empty());
        // The digest-first hit path asks the same: nothing is found.
        assert!(cache.cached(&token_digest(&token)).is_none());
    }

    #[tokio::test]
    async fn the_cache_is_bounded_and_holds_no_token() {
        let (_, cache) = cached(unix_now() + 600, 2);
        for sa in ["a-canary-token", "b", "c"] {
            cache.authenticate(&BearerToken::new(sa)).await.unwrap();
        }
        // Split over two shards of one entry each: never more than two.
        assert!((1..=2).contains(&cache.len()), "{}", cache.len());
        for shard in cache.shards.iter() {
            for (key, _) in shard.lock().iter() {
                assert_eq!(key.len(), 32);
                assert!(!key.windows(6).any(|w| w == b"canary"));
            }
        }
    }

    #[tokio::test]
    async fn a_large_cache_is_split_into_shards_within_its_bound() {
        let (inner, cache) = cached(unix_now() + 600, 64);
        assert_eq!(cache.shards.len(), CACHE_SHARDS);
        for i in 0..1000 {
            cache
                .authenticate(&BearerToken::new(format!("sa-{i}")))
                .await
                .unwrap();
        }
        let len = cache.len();
        assert!(len <= 64 && len > CACHE_SHARDS, "{len}");
        // The newest token is still cached in its shard: no second check.
        let before = inner.calls.load(Ordering::SeqCst);
        cache
            .authenticate(&BearerToken::new("sa-999"))
            .await
            .unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), before);
    }
}
