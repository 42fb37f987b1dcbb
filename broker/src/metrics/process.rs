//! What is read at each scrape rather than counted: the standard
//! `process_*` metrics, and how long ago a backend poll last succeeded.

use std::{
    sync::atomic::{AtomicI64, AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// When the backend pollers last succeeded, for the poll lag gauge.
struct PollState {
    /// Pollers running now.
    active: AtomicI64,
    /// Milliseconds since the Unix epoch of the last successful poll (0: none).
    last_ok_ms: AtomicU64,
}

static POLL: PollState = PollState {
    active: AtomicI64::new(0),
    last_ok_ms: AtomicU64::new(0),
};

/// A backend poller running, until the returned guard drops.
pub fn poller_started() -> Poller {
    POLL.active.fetch_add(1, Ordering::Relaxed);
    Poller(())
}

/// A running backend poller (see [`poller_started`]).
#[derive(Debug)]
pub struct Poller(());

impl Poller {
    /// Notes a successful poll.
    pub fn polled(&self) {
        POLL.last_ok_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        POLL.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `coffer_backend_poll_lag_seconds`: how long ago a poller last succeeded
/// while pollers run; 0 when nothing is polled.
#[derive(Debug)]
pub(super) struct PollLagCollector;

impl Collector for PollLagCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let lag = if POLL.active.load(Ordering::Relaxed) > 0 {
            let last = POLL.last_ok_ms.load(Ordering::Relaxed);
            let now = unix_millis(SystemTime::now());
            // Before the first success the pollers count from process start.
            let since = if last == 0 { start_ms() } else { last };
            now.saturating_sub(since) as f64 / 1000.0
        } else {
            0.0
        };
        let gauge = ConstGauge::new(lag);
        let metric = encoder.encode_descriptor(
            "backend_poll_lag",
            "Seconds since a backend version poll last succeeded, while paths are polled",
            Some(&prometheus_client::registry::Unit::Seconds),
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

fn start_ms() -> u64 {
    process_stats().map_or(0, |s| (s.start_time_seconds * 1000.0) as u64)
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape
/// (prometheus-client has none built in). Absent where `/proc` is.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self` tells.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    start_time_seconds: f64,
}

/// Parses `/proc/self/stat` (after the `(comm)` field, which may hold
/// spaces) with the clock tick rate, page size and boot time.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: u64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field N is fields[N - 3].
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start: f64 = fields.get(19)?.parse().ok()?;
    let vsize: u64 = fields.get(20)?.parse().ok()?;
    let rss: u64 = fields.get(21)?.parse().ok()?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks,
        resident_bytes: rss * page,
        virtual_bytes: vsize,
        open_fds: 0,
        start_time_seconds: boot_time as f64 + start / ticks,
    })
}

fn boot_time() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn process_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Linux fixes USER_HZ at 100 for user space and pages at 4 KiB on the
    // platforms we ship; statm would give the same pages.
    let mut stats = parse_stat(&stat, 100.0, 4096, boot_time()?)?;
    stats.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(stats)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stats) = process_stats() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent",
            Some(&prometheus_client::registry::Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size",
                stats.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size",
                stats.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                stats.open_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch",
                stats.start_time_seconds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;

    #[test]
    fn proc_stat_is_parsed_past_a_command_with_spaces() {
        let stat = "42 (coffer broker) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 123456 789 18446744073709551615";
        let stats = parse_stat(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(
            stats,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 789 * 4096,
                virtual_bytes: 123_456,
                open_fds: 0,
                start_time_seconds: 1_700_000_010.0,
            }
        );
    }

    #[test]
    fn process_metrics_are_exposed() {
        let page = render();
        for name in [
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_resident_memory_bytes",
        ] {
            assert!(page.contains(name), "{name} missing: {page}");
        }
    }
}
