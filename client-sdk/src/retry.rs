//! How calls are retried. The pauses come from the one `Backoff` the
//! Coffer crates share (`coffer-runtime`).

use std::time::Duration;

pub(crate) use coffer_runtime::Backoff;

/// When and how often a call that failed for a passing reason (the broker
/// or its backend unavailable) is tried again.
///
/// Only reads are retried ([`crate::Client::get`] and friends, versions,
/// status); writes are not, since a write whose answer was lost may have
/// happened. A watch reconnects for as long as it lives, with the same
/// backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The first pause.
    pub initial_backoff: Duration,
    /// The longest pause; each pause doubles up to it.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, pausing about 100 ms then 200 ms; a watch's
    /// reconnects back off up to 5 s.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// A fresh backoff following this policy.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.initial_backoff, self.max_backoff)
    }
}
