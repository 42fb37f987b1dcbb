//! The one backoff: exponential, capped, with "equal jitter".
//!
//! Two were in use: the broker's full jitter (a pause anywhere in
//! `[0, step]`) and the SDK's equal jitter (`[step/2, step]`). Equal jitter
//! is kept: its ceiling is the same, so no caller waits longer at worst, and
//! its floor of half a step means a retry loop really does slow down as it
//! fails (full jitter may draw pauses near zero several times running,
//! retrying a broker or Vault that is down in a tight burst). The spread
//! between half and all of a step is still wide enough that clients failing
//! together do not come back together.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

/// Exponential backoff with jitter, as every retrying or reconnecting loop
/// should have.
///
/// The `n`th pause (from 0) is drawn uniformly between half and all of
/// `min(initial * 2^n, max)`; [`Backoff::reset`] after a success starts
/// again from `initial`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next pause: between half and all of the current step.
    pub fn next_delay(&mut self) -> Duration {
        // 2^20 steps of even a millisecond are past any sensible cap; the
        // bound keeps the shift from overflowing.
        let step = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt.min(20)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + random_fraction() / 2.0)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniformly random fraction in `[0, 1)`.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // The system RNG does not fail on supported platforms; if it ever did,
    // a fixed midpoint only loses the jitter, not correctness.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    // The top 53 bits: as many as an f64 holds exactly.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_pause_lies_between_half_and_all_of_its_step() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        for attempt in 0..12u32 {
            let step = (100 * MS * 2u32.pow(attempt.min(10))).min(1000 * MS);
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "attempt {attempt}: {delay:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn pauses_double_up_to_the_cap() {
        let mut backoff = Backoff::new(100 * MS, 400 * MS);
        let delays: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= 100 * MS && delays[0] >= 50 * MS);
        assert!(delays[2] >= 200 * MS, "{delays:?}");
        assert!(delays[4] >= 200 * MS && delays[4] <= 400 * MS, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 400 * MS), "{delays:?}");
    }

    #[test]
    fn a_reset_starts_again_from_the_first_step() {
        let mut backoff = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..8 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= 100 * MS);
    }

    #[test]
    fn a_long_run_of_failures_stays_at_the_cap_without_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(backoff.next_delay() <= Duration::from_secs(30));
        }
    }

    #[test]
    fn the_jitter_spreads_pauses() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(delays.len() > 1, "twenty equal pauses: no jitter");
    }
}
