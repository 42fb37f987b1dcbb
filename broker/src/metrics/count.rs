//! What the broker calls to count: one function per event, so that callers
//! name no label and no series.

use std::{sync::OnceLock, time::Duration};

use prometheus_client::metrics::counter::Counter;

use super::families::{
    CacheLabel, KindLabel, METRICS, NodeLabel, ReasonLabel, ResultLabel, StateLabel,
};

/// Counts one authentication failure.
pub fn auth_failure(reason: &'static str) {
    METRICS
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// How many failures were counted for `reason`.
pub fn auth_failures(reason: &'static str) -> u64 {
    METRICS
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .get()
}

/// Counts one verification-cache lookup.
pub fn auth_cache(hit: bool) {
    // Resolved once: a lookup happens on every request.
    static SERIES: [OnceLock<Counter>; 2] = [OnceLock::new(), OnceLock::new()];
    let result = if hit { "hit" } else { "miss" };
    SERIES[usize::from(hit)]
        .get_or_init(|| {
            METRICS
                .auth_cache
                .get_or_create(&CacheLabel { result })
                .clone()
        })
        .inc();
}

/// One more open watch stream, until the returned guard drops.
pub fn watch_opened() -> WatchOpen {
    METRICS.open_watches.inc();
    WatchOpen(())
}

/// An open watch stream, counted in `coffer_watch_streams_open`.
#[derive(Debug)]
pub struct WatchOpen(());

impl Drop for WatchOpen {
    fn drop(&mut self) {
        METRICS.open_watches.dec();
    }
}

/// Counts one refused watch stream, by the bound that refused it
/// (`per_pod`, `per_account` or `process`).
pub fn watch_refused(reason: &'static str) {
    METRICS
        .watch_refused
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// How many watch streams were refused by `reason`'s bound.
pub fn watches_refused(reason: &'static str) -> u64 {
    METRICS
        .watch_refused
        .get_or_create(&ReasonLabel { reason })
        .get()
}

/// Sets `coffer_watch_streams_max`, the process-wide bound in force.
pub fn set_max_watches(max: usize) {
    METRICS
        .max_watches
        .set(i64::try_from(max).unwrap_or(i64::MAX));
}

/// Counts one watch stream ended for its client to be reviewed again.
pub fn watch_reauthentication() {
    METRICS.watch_reauthentications.inc();
}

/// Counts one watch update tried again after its read failed for a passing
/// reason (Vault unreachable, a share of requests used up).
pub fn watch_update_retried() {
    METRICS.watch_update_retries.inc();
}

/// How many watch streams were ended for their client to be reviewed again.
pub fn watch_reauthentications() -> u64 {
    METRICS.watch_reauthentications.get()
}

/// Counts one lease renewal asked of the backend.
pub fn lease_renewal(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    METRICS
        .lease_renewals
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// Moves one lease between the `coffer_leases` states: `None` is absent,
/// `Some(true)` failing, `Some(false)` ok.
pub fn lease_state(from: Option<bool>, to: Option<bool>) {
    if from == to {
        return;
    }
    let state = |failing: bool| StateLabel {
        state: if failing { "failing" } else { "ok" },
    };
    if let Some(failing) = from {
        METRICS.leases.get_or_create(&state(failing)).dec();
    }
    if let Some(failing) = to {
        METRICS.leases.get_or_create(&state(failing)).inc();
    }
}

/// Counts one backend read-cache lookup: `hit`, `miss` or `coalesced`.
pub fn store_cache(result: &'static str) {
    METRICS
        .read_cache
        .get_or_create(&CacheLabel { result })
        .inc();
}

/// Counts one call to the backend.
pub fn backend_read() {
    METRICS.backend_reads.inc();
}

/// Counts one failed backend call: `unavailable`, `forbidden` or `other`.
pub fn backend_error(kind: &'static str) {
    METRICS
        .backend_errors
        .get_or_create(&KindLabel { kind })
        .inc();
}

/// Counts one move to another Vault node.
pub fn backend_failover() {
    METRICS.backend_failovers.inc();
}

/// Counts one Vault answer behind a version already seen, asked again.
pub fn backend_behind() {
    METRICS.backend_behind.inc();
}

/// Marks whether the node at `address` is the one in use.
pub fn backend_node(address: &str, in_use: bool) {
    METRICS
        .backend_node
        .get_or_create(&NodeLabel {
            address: address.to_string(),
        })
        .set(i64::from(in_use));
}

/// Counts one read refused for the caller's fair share.
pub fn backend_throttled() {
    METRICS.backend_throttled.inc();
}

/// Observes one rollout propagation time.
pub fn propagation(elapsed: Duration) {
    METRICS.propagation_seconds.observe(elapsed.as_secs_f64());
}

/// Counts one policy reload attempt.
pub fn policy_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    METRICS
        .policy_reloads
        .get_or_create(&ResultLabel { result })
        .inc();
}

/// Counts one audit record that could not be written.
pub fn audit_write_failure() {
    METRICS.audit_write_failures.inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::render;

    #[test]
    fn failures_are_counted_by_reason() {
        let before = auth_failures("unknown_kid");
        auth_failure("unknown_kid");
        assert_eq!(auth_failures("unknown_kid"), before + 1);
        assert!(
            render().contains("coffer_auth_failures_total{reason=\"unknown_kid\"}"),
            "{}",
            render()
        );
    }
}
