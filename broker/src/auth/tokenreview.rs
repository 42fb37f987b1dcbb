//! TokenReview: ask the API server whether a token is valid
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`).
//!
//! The API server checks everything it knows, including whether the pod or
//! secret the token is bound to still exists, which no offline verifier can.
//! The broker authenticates with its own credentials (its service account
//! needs `system:auth-delegator`, see docs/auth.md) and passes its expected
//! audiences. Positive answers are cached (by `auth::cache`) for the
//! shorter of the token's `exp` and a short TTL, so revocation takes effect
//! within that TTL; a watch stream opened with such an answer ends at the
//! same time, cleanly and not as a failure (the token is still good:
//! [`Verified::ends_before_the_token`]), and the client reconnects with a
//! fresh review.
//!
//! Each review costs the API server a request, so anyone able to reach the
//! broker could make it call the API server at will. Three guards bound
//! that: a refused token is remembered (by SHA-256, never in clear) for a
//! few seconds, so repeating it costs nothing; at most `max_concurrent`
//! reviews run at once; and reviews start at most `rate_per_second` a
//! second (with an equal burst). A caller that would wait longer than
//! `max_wait` for its turn is refused with `review_throttled`
//! (`UNAUTHENTICATED`, like every authentication failure: a client retries
//! with backoff, and a flood never queues without bound).

use std::{num::NonZeroUsize, sync::Arc, time::Duration};

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use tokio::{sync::Semaphore, time::Instant};

use super::{
    AuthError, Authenticator, BearerToken, Verified, WorkloadIdentity,
    cache::{TokenDigest, token_digest},
    http::{HttpClient, HttpConfig, HttpError},
    jwt::{self, is_name, unix_now},
};

/// The default TTL of a positive answer.
pub const DEFAULT_REVIEW_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How many refused tokens are remembered.
pub const NEGATIVE_CACHE_ENTRIES: usize = 4096;
/// The default bound on reviews in flight.
pub const DEFAULT_MAX_CONCURRENT: usize = 8;
/// The default sustained rate of reviews (and burst).
pub const DEFAULT_RATE_PER_SECOND: u32 = 20;
/// The longest a call waits for its turn before it is refused.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(2);
/// The path of the TokenReview API.
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The `extra` keys the API server sets for pod-bound tokens.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// See [`EXTRA_POD_NAME`].
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Settings for TokenReview.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// The issuer named in the tokens this authenticator handles.
    pub issuer: String,
    /// The API server, e.g. `https://kubernetes.default.svc`.
    pub server: String,
    /// The audiences the token must be valid for.
    pub audiences: Vec<String>,
    /// CA bundle, timeout and the broker's own token.
    pub http: HttpConfig,
    /// How long a positive answer is reused at most.
    pub ttl: Duration,
    /// How long a refused token is refused without asking again.
    pub negative_ttl: Duration,
    /// Reviews in flight at most.
    pub max_concurrent: usize,
    /// Reviews started per second at most (and the burst).
    pub rate_per_second: u32,
    /// The longest a call waits for its turn.
    pub max_wait: Duration,
}

impl TokenReviewConfig {
    /// The defaults for `issuer` reviewed by `server`.
    pub fn new(
        issuer: impl Into<String>,
        server: impl Into<String>,
        audiences: Vec<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            server: server.into(),
            audiences,
            http: HttpConfig::default(),
            ttl: DEFAULT_REVIEW_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            rate_per_second: DEFAULT_RATE_PER_SECOND,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

/// Authenticates by TokenReview.
pub struct TokenReviewAuthenticator {
    config: TokenReviewConfig,
    url: String,
    http: HttpClient,
    /// Refused tokens by SHA-256: the refusal and when it stops counting.
    refused: Mutex<LruCache<TokenDigest, (AuthError, Instant)>>,
    in_flight: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

/// A token bucket that hands out reservations: a caller takes a token now
/// or learns how long until its token is due.
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenReviewAuthenticator {
    /// Prepares the client; no request is made yet.
    pub fn new(config: TokenReviewConfig) -> Result<Self, HttpError> {
        let url = format!("{}{TOKEN_REVIEW_PATH}", config.server.trim_end_matches('/'));
        let http = HttpClient::new(&config.http, &url)?;
        let entries = NonZeroUsize::new(NEGATIVE_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Ok(Self {
            in_flight: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.rate_per_second.max(1)),
                refilled: Instant::now(),
            }),
            refused: Mutex::new(LruCache::new(entries)),
            config,
            url,
            http,
        })
    }

    /// A refusal remembered for this token, if still fresh.
    fn remembered(&self, digest: &TokenDigest) -> Option<AuthError> {
        let mut refused = self.refused.lock();
        match refused.get(digest) {
            Some((error, until)) if *until > Instant::now() => Some(error.clone()),
            Some(_) => {
                refused.pop(digest);
                None
            }
            None => None,
        }
    }

    /// How long until this caller may start a review, having reserved its
    /// turn; `None` (nothing reserved) when that is beyond `max_wait`.
    fn reserve(&self) -> Option<Duration> {
        let rate = f64::from(self.config.rate_per_second.max(1));
        // The bucket is two numbers updated together under the lock.
        let mut bucket = self.bucket.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        let wait = if bucket.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - bucket.tokens) / rate)
        };
        if wait > self.config.max_wait {
            return None;
        }
        bucket.tokens -= 1.0;
        Some(wait)
    }

    /// One review under the guards: its turn in the rate, then a slot.
    async fn guarded_review(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        // Logged and counted once per call, as every refusal is (reason
        // `review_throttled`): no extra line that a flood could multiply.
        let throttled = || AuthError::ReviewThrottled;
        let started = Instant::now();
        let wait = self.reserve().ok_or_else(throttled)?;
        tokio::time::sleep(wait).await;
        let left = self.config.max_wait.saturating_sub(started.elapsed());
        let _slot = tokio::time::timeout(left, Arc::clone(&self.in_flight).acquire_owned())
            .await
            .map_err(|_| throttled())?
            // The semaphore is never closed.
            .map_err(|_| throttled())?;
        self.review(token).await
    }
}

#[derive(Deserialize)]
struct Review {
    #[serde(default)]
    status: ReviewStatus,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: UserInfo,
    #[serde(default)]
    audiences: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    extra: HashMap<String, Vec<String>>,
}

#[async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        let digest = token_digest(token);
        if let Some(error) = self.remembered(&digest) {
            return Err(error);
        }
        let result = self.guarded_review(token).await;
        // Only the API server's own verdicts are remembered: a review that
        // could not be made (or was throttled) says nothing about the token.
        if let Err(
            error @ (AuthError::ReviewRejected
            | AuthError::WrongAudience
            | AuthError::NotServiceAccount),
        ) = &result
        {
            self.refused.lock().put(
                digest,
                (error.clone(), Instant::now() + self.config.negative_ttl),
            );
        }
        result
    }

    fn issuers(&self) -> Vec<String> {
        vec![self.config.issuer.clone()]
    }
}

impl TokenReviewAuthenticator {
    /// Asks the API server.
    async fn review(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        // Unverified: used only to cache no longer than the token lives. The
        // API server decides validity.
        let exp = jwt::peek(token.expose()).ok().and_then(|c| c.exp);
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token.expose(), "audiences": self.config.audiences },
        });
        let review: Review = self
            .http
            .post_json(&self.url, body.to_string().into_bytes())
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                AuthError::ReviewUnavailable
            })?;
        let status = review.status;
        if !status.authenticated {
            return Err(AuthError::ReviewRejected);
        }
        // The API server returns the audiences the token was valid for; an
        // answer that does not name one of ours is not an answer for us.
        let ours = status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| self.config.audiences.contains(a));
        if !ours {
            return Err(AuthError::WrongAudience);
        }
        let (namespace, service_account) =
            parse_username(&status.user.username).ok_or(AuthError::NotServiceAccount)?;
        let first = |key: &str| {
            status
                .user
                .extra
                .get(key)
                .and_then(|values| values.first())
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let now = unix_now();
        let until = now + self.config.ttl.as_secs();
        Ok(Verified {
            identity: WorkloadIdentity {
                issuer: self.config.issuer.clone(),
                namespace,
                service_account,
                service_account_uid: (!status.user.uid.is_empty())
                    .then_some(status.user.uid.clone()),
                pod_name: first(EXTRA_POD_NAME),
                pod_uid: first(EXTRA_POD_UID),
            },
            // Without an `exp` (a legacy token), the TTL alone bounds it.
            expires_at: exp.map_or(until, |exp| exp.min(until)),
            key: None,
            token_exp: exp,
        })
    }
}

/// `system:serviceaccount:NS:NAME` into `(NS, NAME)`.
fn parse_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (is_name(namespace) && is_name(name)).then(|| (namespace.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_are_identities() {
        assert_eq!(
            parse_username("system:serviceaccount:shop:web"),
            Some(("shop".into(), "web".into()))
        );
        for bad in [
            "alice",
            "system:serviceaccount:shop",
            "system:serviceaccount:shop:web:extra",
            "system:serviceaccount::web",
            "system:node:worker-1",
        ] {
            assert_eq!(parse_username(bad), None, "{bad}");
        }
    }
}
