//! The knobs of the store's behaviour towards Vault: the value cache,
//! change polling and the protection of the Vault server.

use std::time::Duration;

use serde::Deserialize;

use super::duration::duration;

/// The value cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// How long a read value is served without asking Vault again.
    #[serde(default = "default_cache_ttl", deserialize_with = "duration")]
    pub ttl: Duration,
    /// Upper bound on cached secret bytes.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: usize,
    /// While Vault is unreachable or sealed, cached values are served until
    /// they are this old (counted from the last successful read).
    #[serde(default = "default_staleness", deserialize_with = "duration")]
    pub max_staleness: Duration,
    /// How long "not found" is remembered, so a caller asking again and
    /// again for a missing path costs one Vault read per period (0s: off).
    #[serde(default = "default_negative_ttl", deserialize_with = "duration")]
    pub negative_ttl: Duration,
    /// Upper bound on remembered "not found" answers.
    #[serde(default = "default_negative_entries")]
    pub max_negative_entries: usize,
}

fn default_cache_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_cache_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_staleness() -> Duration {
    Duration::from_secs(300)
}
fn default_negative_ttl() -> Duration {
    Duration::from_secs(2)
}
fn default_negative_entries() -> usize {
    10_000
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: default_cache_ttl(),
            max_bytes: default_cache_bytes(),
            max_staleness: default_staleness(),
            negative_ttl: default_negative_ttl(),
            max_negative_entries: default_negative_entries(),
        }
    }
}

/// Change detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PollConfig {
    /// How often each watched path's metadata is polled.
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub interval: Duration,
    /// Random spread added to each interval, as a fraction of it (0..=1).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_poll() -> Duration {
    Duration::from_secs(10)
}
fn default_jitter() -> f64 {
    0.2
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: default_poll(),
            jitter: default_jitter(),
        }
    }
}

/// Protection of the Vault server.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitConfig {
    /// At most this many requests per second to Vault (0: unlimited).
    #[serde(default = "default_rate")]
    pub max_requests_per_second: u32,
    /// Retries of a request that failed with 429, 5xx or a transport error.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The first backoff; doubled on each retry, with equal jitter (each
    /// pause between half and all of its step).
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub initial_backoff: Duration,
    /// The largest backoff.
    #[serde(default = "default_max_backoff", deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Timeout of one HTTP request.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Each caller identity's share of Vault reads per second (0: no
    /// per-identity limit), so one tenant cannot use up the whole budget.
    #[serde(default = "default_identity_rate")]
    pub per_identity_requests_per_second: u32,
    /// How many reads an identity may make at once above its rate.
    #[serde(default = "default_identity_burst")]
    pub per_identity_burst: u32,
    /// How long a read may wait for its identity's share before it is
    /// refused with `RESOURCE_EXHAUSTED`.
    #[serde(default = "default_identity_wait", deserialize_with = "duration")]
    pub per_identity_max_wait: Duration,
}

fn default_rate() -> u32 {
    200
}
fn default_retries() -> u32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_identity_rate() -> u32 {
    50
}
fn default_identity_burst() -> u32 {
    100
}
fn default_identity_wait() -> Duration {
    Duration::from_secs(1)
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_requests_per_second: default_rate(),
            max_retries: default_retries(),
            initial_backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            request_timeout: default_timeout(),
            per_identity_requests_per_second: default_identity_rate(),
            per_identity_burst: default_identity_burst(),
            per_identity_max_wait: default_identity_wait(),
        }
    }
}
