//! The sidecar's Prometheus metrics, served at `GET /metrics` on the probe
//! endpoint (`adminListen`).
//!
//! The probe endpoint listens on the pod's address, where any pod on the
//! network may scrape it, so no metric names a secret: there are no labels
//! at all, only counts and a timestamp. Which version of which secret a pod
//! holds is the broker's to tell, to operators allowed to ask
//! (`cofferctl status PATH`). The proxies' metrics carry one label, the
//! proxy's configured name, which is not a secret path.

use std::{
    collections::HashSet,
    sync::LazyLock,
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
    proxy_open: Family<ProxyLabel, Gauge>,
    proxy_connections: Family<ProxyLabel, Counter>,
    proxy_auth_failures: Family<ProxyLabel, Counter>,
    proxy_bytes: Family<ProxyDirection, Counter>,
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
        proxy_open: Family::default(),
        proxy_connections: Family::default(),
        proxy_auth_failures: Family::default(),
        proxy_bytes: Family::default(),
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
    registry.register(
        "proxy_connections_open",
        "Connections from the app open now, by proxy",
        metrics.proxy_open.clone(),
    );
    registry.register(
        "proxy_connections",
        "Connections from the app accepted, by proxy",
        metrics.proxy_connections.clone(),
    );
    registry.register(
        "proxy_upstream_auth_failures",
        "Upstream logins refused (postgres) or answered 401 (http), by proxy",
        metrics.proxy_auth_failures.clone(),
    );
    registry.register(
        "proxy_bytes",
        "Bytes relayed by closed postgres sessions, by proxy and direction",
        metrics.proxy_bytes.clone(),
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

type ProxyLabel = Vec<(&'static str, String)>;
type ProxyDirection = Vec<(&'static str, String)>;

fn proxy_label(proxy: &str) -> ProxyLabel {
    vec![("proxy", proxy.to_string())]
}

/// An open proxy connection, counted while it lives.
pub struct ProxyConnection(ProxyLabel);

impl ProxyConnection {
    /// Counts a connection accepted by `proxy`.
    pub fn open(proxy: &str) -> Self {
        let label = proxy_label(proxy);
        METRICS.proxy_connections.get_or_create(&label).inc();
        METRICS.proxy_open.get_or_create(&label).inc();
        Self(label)
    }
}

impl Drop for ProxyConnection {
    fn drop(&mut self) {
        METRICS.proxy_open.get_or_create(&self.0).dec();
    }
}

/// Counts an upstream login refused.
pub fn proxy_auth_failure(proxy: &str) {
    METRICS
        .proxy_auth_failures
        .get_or_create(&proxy_label(proxy))
        .inc();
}

/// Adds a closed session's bytes.
pub fn proxy_bytes(proxy: &str, to_upstream: u64, to_app: u64) {
    for (direction, n) in [("to_upstream", to_upstream), ("to_app", to_app)] {
        let label = vec![
            ("proxy", proxy.to_string()),
            ("direction", direction.to_string()),
        ];
        METRICS.proxy_bytes.get_or_create(&label).inc_by(n);
    }
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
