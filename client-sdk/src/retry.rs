//! How calls are retried: one backoff for every reconnecting loop.

use std::time::{Duration, Instant};

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

/// Exponential backoff with jitter, as every reconnecting client should have.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            next: base,
            base,
            max,
        }
    }

    /// The next delay: between half and all of the current step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        // Jitter only spreads reconnects out; it need not be unpredictable.
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        );
        let fraction = 0.5 + (seed % 1000) as f64 / 2000.0;
        step.mul_f64(fraction)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[2] >= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
