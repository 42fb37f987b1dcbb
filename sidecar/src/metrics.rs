//! The sidecar's Prometheus metrics, served at `GET /metrics` on the probe
//! endpoint (`adminListen`).
//!
//! The probe endpoint listens on the pod's address, where any pod on the
//! network may scrape it, so no metric names a secret: there are no labels
//! at all, only counts and a timestamp. Which version of which secret a pod
//! holds is the broker's to tell, to operators allowed to ask
//! (`cofferctl status PATH`).

use std::{
    collections::HashSet,
    sync::LazyLock,
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

struct Metrics {
    files_written: Counter,
    write_failures: Counter,
    updates_applied: Counter,
    secrets: Gauge,
    /// The secrets that have a version in the files, to count them; never
    /// rendered. Bounded by the configuration (its own paths only).
    applied_paths: Mutex<HashSet<String>>,
    last_update: Gauge<f64, std::sync::atomic::AtomicU64>,
    reconnects: Counter,
    admin_connections_shed: Counter,
    registry: Mutex<Registry>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        files_written: Counter::default(),
        write_failures: Counter::default(),
        updates_applied: Counter::default(),
        secrets: Gauge::default(),
        applied_paths: Mutex::new(HashSet::new()),
        last_update: Gauge::default(),
        reconnects: Counter::default(),
        admin_connections_shed: Counter::default(),
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
        "updates_applied",
        "New versions of secrets written to the files (one per secret and version)",
        metrics.updates_applied.clone(),
    );
    registry.register(
        "secrets_applied",
        "Secrets that have a version in the files now",
        metrics.secrets.clone(),
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
    registry.register(
        "admin_connections_shed",
        "Connections to the probe or quit endpoint closed to make room for a new one",
        metrics.admin_connections_shed.clone(),
    );
    *metrics.registry.lock() = registry;
    metrics
});

/// Notes an applied update: `files` files written and the versions now in
/// them, by secret path (counted, never shown).
pub fn applied<'a>(files: usize, versions: impl IntoIterator<Item = (&'a str, u64)>) {
    METRICS.files_written.inc_by(files as u64);
    let mut paths = METRICS.applied_paths.lock();
    for (path, _version) in versions {
        METRICS.updates_applied.inc();
        if !paths.contains(path) {
            paths.insert(path.to_string());
        }
    }
    METRICS
        .secrets
        .set(i64::try_from(paths.len()).unwrap_or(i64::MAX));
    drop(paths);
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

/// Counts a connection to an admin endpoint closed to make room.
pub fn admin_connection_shed() {
    METRICS.admin_connections_shed.inc();
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    coffer_runtime::metrics::render(&METRICS.registry.lock())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_update_is_counted_without_naming_the_secret() {
        applied(2, [("shop/db", 7), ("shop/api", 3)]);
        applied(1, [("shop/db", 8)]);
        write_failure();
        let page = render();
        assert!(
            page.contains("coffer_sidecar_secrets_applied 2\n"),
            "{page}"
        );
        assert!(
            page.contains("coffer_sidecar_updates_applied_total 3\n"),
            "{page}"
        );
        assert!(
            page.contains("coffer_sidecar_files_written_total 3\n"),
            "{page}"
        );
        assert!(
            page.contains("coffer_sidecar_write_failures_total 1\n"),
            "{page}"
        );
        assert!(!page.contains("shop"), "{page}");
    }
}
