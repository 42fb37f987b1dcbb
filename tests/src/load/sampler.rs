//! A process's resident memory and open descriptors, sampled from /proc
//! at a fixed pace while a load runs, and their trend after warm-up.

use std::time::{Duration, Instant};

use tokio::{sync::watch, task::JoinHandle};

use super::least_squares;

/// Samples kept at most (10 minutes at one a second fit).
const MAX_SAMPLES: usize = 1_000;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the sampler started.
    pub at: Duration,
    /// `VmRSS` from /proc/PID/status, KiB.
    pub rss_kib: u64,
    /// Entries of /proc/PID/fd.
    pub fds: u64,
}

/// Samples a process until stopped.
pub struct Sampler {
    task: JoinHandle<Vec<Sample>>,
    stop: watch::Sender<bool>,
}

impl Sampler {
    /// Samples `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                if let Some(sample) = sample(pid, start.elapsed())
                    && samples.len() < MAX_SAMPLES
                {
                    samples.push(sample);
                }
            }
            samples
        });
        Self { task, stop }
    }

    /// Stops; returns the samples.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// One reading of `pid`, `None` once it is gone.
pub fn sample(pid: u32, at: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { at, rss_kib, fds })
}

/// The least-squares slope per minute of `value` over the samples taken
/// after `warm_up`; `None` with fewer than two.
pub fn slope_per_minute(
    samples: &[Sample],
    warm_up: Duration,
    value: impl Fn(&Sample) -> f64,
) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.at >= warm_up)
        .map(|s| (s.at.as_secs_f64() / 60.0, value(s)))
        .collect();
    least_squares(&points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id(), Duration::ZERO).unwrap();
        assert!(me.rss_kib > 0 && me.fds > 0, "{me:?}");
    }

    #[test]
    fn the_slope_counts_only_the_samples_after_warm_up() {
        let samples: Vec<Sample> = (0..20)
            .map(|s| Sample {
                at: Duration::from_secs(s * 6),
                // Grows 1,000 KiB a sample (10,000 a minute) during the
                // first minute, flat after.
                rss_kib: 1_000 * s.min(10),
                fds: 10,
            })
            .collect();
        let rss = slope_per_minute(&samples, Duration::from_secs(60), |s| s.rss_kib as f64);
        assert_eq!(rss, Some(0.0));
        let all = slope_per_minute(&samples, Duration::ZERO, |s| s.rss_kib as f64).unwrap();
        assert!(all > 1_000.0, "{all}");
    }
}
