//! Protecting Vault: a request-rate ceiling, each identity's fair share of
//! it, the jitter of periodic work, and the classification of failures
//! that decides what is retried (with `coffer_runtime::Backoff`).

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::Instant;
use vaultrs::error::ClientError;

/// What a failed Vault call means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// 404: the thing is not there.
    NotFound,
    /// 403: the token is invalid or the policy says no.
    Forbidden,
    /// 429, 5xx (including sealed), timeouts, connection failures: retry.
    Transient,
    /// Anything else (400, parse errors): do not retry.
    Permanent,
}

/// Sorts a vaultrs error.
pub(super) fn classify(error: &ClientError) -> Class {
    match error {
        ClientError::APIError { code, .. } => match code {
            404 => Class::NotFound,
            401 | 403 => Class::Forbidden,
            429 | 500..=599 => Class::Transient,
            _ => Class::Permanent,
        },
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => match code {
                404 => Class::NotFound,
                401 | 403 => Class::Forbidden,
                429 | 500..=599 => Class::Transient,
                _ => Class::Permanent,
            },
            // Connection refused, reset, timed out: the server may come back.
            rustify::errors::ClientError::RequestError { .. }
            | rustify::errors::ClientError::ResponseError { .. } => Class::Transient,
            _ => Class::Permanent,
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => Class::NotFound,
        _ => Class::Permanent,
    }
}

/// A uniformly random fraction in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // The system RNG does not fail on supported platforms; if it ever did,
    // a fixed midpoint only loses the jitter, not correctness.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` plus up to `fraction` of it, at random.
pub(super) fn jittered(base: Duration, fraction: f64) -> Duration {
    base.mul_f64(1.0 + fraction * random_fraction())
}

/// Spaces requests at least `1/rate` apart.
pub(super) struct RateLimiter {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// At most `per_second` requests per second; 0 means unlimited.
    pub(super) fn new(per_second: u32) -> Self {
        Self {
            interval: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this request's slot (`max_wait` `None`: however far away
    /// it is), or refuses at once, booking nothing, when that slot is more
    /// than `max_wait` away: a caller's request then cannot queue without
    /// bound behind everyone else's.
    pub(super) async fn acquire_within(&self, max_wait: Option<Duration>) -> Result<(), OverShare> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let slot = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let slot = (*next).max(now);
            if max_wait.is_some_and(|max| slot.duration_since(now) > max) {
                return Err(OverShare);
            }
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
        Ok(())
    }
}

/// The most identities tracked at once; beyond it, identities without a
/// pending debt are forgotten, and new ones share one bucket.
const MAX_TENANTS: usize = 10_000;

/// A token bucket per caller identity (GCRA: one "theoretical arrival time"
/// per identity). A request within the identity's burst goes at once; one
/// that would have to wait longer than `max_wait` is refused, so a flooding
/// identity sheds its own excess instead of queueing in front of everyone
/// else at the global [`RateLimiter`].
pub(super) struct TenantLimiter {
    /// `None`: no per-identity limit.
    interval: Option<Duration>,
    /// How far ahead of now an identity may book: the burst.
    tolerance: Duration,
    max_wait: Duration,
    next: Mutex<HashMap<String, Instant>>,
}

/// An identity used up its share of Vault reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OverShare;

impl TenantLimiter {
    pub(super) fn new(per_second: u32, burst: u32, max_wait: Duration) -> Self {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        Self {
            interval,
            tolerance: interval.unwrap_or_default() * burst.saturating_sub(1),
            max_wait,
            next: Mutex::default(),
        }
    }

    /// Waits for `tenant`'s next slot, or refuses if that is more than
    /// `max_wait` away (and then books nothing).
    pub(super) async fn acquire(&self, tenant: &str) -> Result<(), OverShare> {
        let Some(interval) = self.interval else {
            return Ok(());
        };
        let start = {
            let mut next = self.next.lock();
            let now = Instant::now();
            if next.len() >= MAX_TENANTS && !next.contains_key(tenant) {
                next.retain(|_, at| *at > now);
            }
            let key = if next.len() >= MAX_TENANTS && !next.contains_key(tenant) {
                ""
            } else {
                tenant
            };
            let booked = next.get(key).copied().unwrap_or(now).max(now);
            // The earliest this request may go: its booking minus the burst.
            let start = booked.checked_sub(self.tolerance).unwrap_or(now).max(now);
            if start.duration_since(now) > self.max_wait {
                return Err(OverShare);
            }
            next.insert(key.to_string(), booked + interval);
            start
        };
        tokio::time::sleep_until(start).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_sorted_into_retry_classes() {
        let api = |code| ClientError::APIError {
            code,
            errors: vec![],
        };
        assert_eq!(classify(&api(404)), Class::NotFound);
        assert_eq!(classify(&api(403)), Class::Forbidden);
        assert_eq!(classify(&api(429)), Class::Transient);
        assert_eq!(classify(&api(503)), Class::Transient);
        assert_eq!(classify(&api(400)), Class::Permanent);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        for _ in 0..5 {
            limiter.acquire_within(None).await.unwrap();
        }
        // Five requests at 10/s: the fifth waits for its slot at 400 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_for_the_rate_limiter_is_refused_beyond_its_bound() {
        let limiter = RateLimiter::new(10);
        let start = Instant::now();
        let bound = Some(Duration::from_millis(250));
        let results =
            futures::future::join_all((0..10).map(|_| limiter.acquire_within(bound))).await;
        // Slots at 0, 100, 200 ms are within the bound; the rest is refused
        // and books nothing.
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        let next = Instant::now();
        limiter.acquire_within(None).await.unwrap();
        assert_eq!(next.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn an_identity_over_its_share_is_refused_while_others_go_at_once() {
        // 10/s, a burst of 3, at most 200 ms of waiting.
        let limiter = TenantLimiter::new(10, 3, Duration::from_millis(200));
        let start = Instant::now();
        let results = futures::future::join_all((0..20).map(|_| limiter.acquire("noisy"))).await;
        // Three at once, two more within 200 ms; the rest is refused.
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        let quiet = Instant::now();
        limiter.acquire("quiet").await.unwrap();
        assert_eq!(
            quiet.elapsed(),
            Duration::ZERO,
            "another identity is not held up"
        );
    }
}
