//! The figures of a run and how they are summarised: rate, quantiles and
//! server CPU per request; medians over repeated runs.

use std::time::Duration;

/// One figure of one server.
#[derive(Default, Clone)]
pub(crate) struct Figures {
    pub(crate) rate: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) cpu_per_req: Duration,
}

impl Figures {
    /// The median of each figure over `runs` (each taken on its own).
    pub(crate) fn median(runs: &[Figures]) -> Figures {
        let of = |figure: fn(&Figures) -> Duration| median(runs.iter().map(figure).collect());
        Figures {
            rate: median_f64(runs.iter().map(|f| f.rate).collect()),
            p50: of(|f| f.p50),
            p99: of(|f| f.p99),
            p999: of(|f| f.p999),
            cpu_per_req: of(|f| f.cpu_per_req),
        }
    }
}

pub(crate) fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    quantile(&values, 0.5)
}

/// The figures of one side's rotations to N watchers.
#[derive(Default, Clone)]
pub(crate) struct WatchFigures {
    pub(crate) first: Duration,
    pub(crate) median: Duration,
    pub(crate) p99: Duration,
    pub(crate) last: Duration,
    /// Server CPU time of the fan-out per update delivered.
    pub(crate) cpu_per_update: Duration,
    pub(crate) rss_per_stream: f64,
}

/// The figures of a run: its latencies, how long it took, the server CPU
/// it cost.
pub(crate) fn figures(mut latencies: Vec<Duration>, elapsed: Duration, cpu: Duration) -> Figures {
    latencies.sort_unstable();
    let n = latencies.len().max(1);
    Figures {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        cpu_per_req: cpu / u32::try_from(n).unwrap_or(u32::MAX),
    }
}

pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}
