//! The sidecar's Prometheus metrics, served at `GET /metrics` on the probe
//! endpoint (`adminListen`).
//!
//! The only label is a secret's `path`, taken from the sidecar's own
//! configuration (a fixed, short list), never from the broker or a value.

use std::{
    sync::{LazyLock, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The `path` label: a secret path from the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

struct Metrics {
    files_written: Counter,
    write_failures: Counter,
    applied_version: Family<PathLabel, Gauge>,
    last_update: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconnects: Counter,
    registry: Mutex<Registry>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        files_written: Counter::default(),
        write_failures: Counter::default(),
        applied_version: Family::default(),
        last_update: Gauge::default(),
        reconnects: Counter::default(),
        registry: Mutex::new(Registry::default()),
    };
    let mut registry = Registry::with_prefix("coffer_sidecar");
    registry.register(
        "files_written",
        "Files written or replaced (each atomic ..data swap counts its changed files)",
        metrics.files_written.clone(),
    );
    registry.register(
        "write_failures",
        "Updates that could not be written; the previous files stay",
        metrics.write_failures.clone(),
    );
    registry.register(
        "applied_version",
        "The version of each secret in the files now",
        metrics.applied_version.clone(),
    );
    registry.register(
        "last_update_timestamp_seconds",
        "When an update was last applied, in seconds since the Unix epoch",
        metrics.last_update.clone(),
    );
    registry.register(
        "reconnects",
        "Watch streams opened again after one ended or failed",
        metrics.reconnects.clone(),
    );
    *metrics
        .registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
    metrics
});

/// Notes an applied update: `files` files written and the versions now in them.
pub fn applied<'a>(files: usize, versions: impl IntoIterator<Item = (&'a str, u64)>) {
    METRICS.files_written.inc_by(files as u64);
    for (path, version) in versions {
        METRICS
            .applied_version
            .get_or_create(&PathLabel {
                path: path.to_string(),
            })
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    METRICS.last_update.set(now);
}

/// Counts an update that could not be written.
pub fn write_failure() {
    METRICS.write_failures.inc();
}

/// Counts a reconnect of the watch stream.
pub fn reconnect() {
    METRICS.reconnects.inc();
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let registry = METRICS
        .registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_update_sets_the_version_and_counts_files() {
        applied(2, [("shop/db", 7)]);
        write_failure();
        let page = render();
        assert!(
            page.contains("coffer_sidecar_applied_version{path=\"shop/db\"} 7"),
            "{page}"
        );
        assert!(
            page.contains("coffer_sidecar_files_written_total"),
            "{page}"
        );
        assert!(
            page.contains("coffer_sidecar_write_failures_total"),
            "{page}"
        );
    }
}
