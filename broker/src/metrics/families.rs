//! Every metric the broker exports, declared and registered once, in one
//! process-wide registry.

use std::sync::LazyLock;

use parking_lot::Mutex;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::process::{PollLagCollector, ProcessCollector};

/// The `reason` label of an authentication failure or a refused watch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// An `AuthError::reason()`, or the bound that refused a watch.
    pub reason: &'static str,
}

/// The `result` label of a verification-cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `hit` or `miss` (`coalesced` for the backend read cache).
    pub result: &'static str,
}

/// The labels of a gRPC request: its method and status code name, both
/// from fixed sets (see [`rpc_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabel {
    /// `Service/Method` of an implemented method, or `unknown`.
    pub rpc: String,
    /// The gRPC status code name (`OK`, `PERMISSION_DENIED`, ...).
    pub code: &'static str,
}

/// The `result` label of an outcome: `ok` or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// The `kind` label of a backend error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `unavailable`, `forbidden` or `other`.
    pub kind: &'static str,
}

/// The `address` label of a backend node (from the configuration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// The node's configured address.
    pub address: String,
}

/// The `state` label of a live lease.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `ok` or `failing` (renewals fail; served until it expires).
    pub state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn propagation_histogram() -> Histogram {
    // 10 ms .. ~2.8 h: a rollout can wait on a slow pod.
    Histogram::new(exponential_buckets(0.01, 3.0, 14))
}

pub(super) struct Metrics {
    pub(super) auth_failures: Family<ReasonLabel, Counter>,
    pub(super) auth_cache: Family<CacheLabel, Counter>,
    pub(super) requests: Family<RpcLabel, Counter>,
    pub(super) request_seconds: HistogramFamily<RpcLabel>,
    pub(super) open_watches: Gauge,
    pub(super) max_watches: Gauge,
    pub(super) watch_refused: Family<ReasonLabel, Counter>,
    pub(super) watch_reauthentications: Counter,
    pub(super) watch_update_retries: Counter,
    pub(super) read_cache: Family<CacheLabel, Counter>,
    pub(super) backend_reads: Counter,
    pub(super) backend_errors: Family<KindLabel, Counter>,
    pub(super) backend_throttled: Counter,
    pub(super) backend_failovers: Counter,
    pub(super) backend_behind: Counter,
    pub(super) backend_node: Family<NodeLabel, Gauge>,
    pub(super) propagation_seconds: Histogram,
    pub(super) policy_reloads: Family<ResultLabel, Counter>,
    pub(super) audit_write_failures: Counter,
    pub(super) lease_renewals: Family<ResultLabel, Counter>,
    pub(super) leases: Family<StateLabel, Gauge>,
    pub(super) registry: Mutex<Registry>,
}

pub(super) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        auth_failures: Family::default(),
        auth_cache: Family::default(),
        requests: Family::default(),
        request_seconds: Family::new_with_constructor(latency_histogram),
        open_watches: Gauge::default(),
        max_watches: Gauge::default(),
        watch_refused: Family::default(),
        watch_reauthentications: Counter::default(),
        watch_update_retries: Counter::default(),
        read_cache: Family::default(),
        backend_reads: Counter::default(),
        backend_errors: Family::default(),
        backend_throttled: Counter::default(),
        backend_failovers: Counter::default(),
        backend_behind: Counter::default(),
        backend_node: Family::default(),
        propagation_seconds: propagation_histogram(),
        policy_reloads: Family::default(),
        audit_write_failures: Counter::default(),
        lease_renewals: Family::default(),
        leases: Family::default(),
        registry: Mutex::new(Registry::default()),
    };
    // Known label values start at 0, so rate() and alerts see the series
    // before the first event instead of nothing.
    for kind in ["unavailable", "forbidden", "other"] {
        let _ = metrics.backend_errors.get_or_create(&KindLabel { kind });
    }
    for result in ["ok", "error"] {
        let _ = metrics
            .policy_reloads
            .get_or_create(&ResultLabel { result });
        let _ = metrics
            .lease_renewals
            .get_or_create(&ResultLabel { result });
    }
    for state in ["ok", "failing"] {
        let _ = metrics.leases.get_or_create(&StateLabel { state });
    }
    for result in ["hit", "miss", "coalesced"] {
        let _ = metrics.read_cache.get_or_create(&CacheLabel { result });
    }
    for reason in ["per_pod", "per_account", "process"] {
        let _ = metrics.watch_refused.get_or_create(&ReasonLabel { reason });
    }
    let mut root = Registry::default();
    root.register_collector(Box::new(ProcessCollector));
    let registry = root.sub_registry_with_prefix("coffer");
    registry.register(
        "auth_failures",
        "Requests refused as unauthenticated, by precise reason",
        metrics.auth_failures.clone(),
    );
    registry.register(
        "auth_cache_lookups",
        "Verification cache lookups, by result",
        metrics.auth_cache.clone(),
    );
    registry.register(
        "grpc_requests",
        "gRPC requests answered, by method and status code",
        metrics.requests.clone(),
    );
    registry.register_with_unit(
        "grpc_request_duration",
        "Time to the response headers of gRPC requests, by method and status code",
        prometheus_client::registry::Unit::Seconds,
        metrics.request_seconds.clone(),
    );
    registry.register(
        "watch_streams_open",
        "Watch streams open now",
        metrics.open_watches.clone(),
    );
    registry.register(
        "watch_streams_max",
        "The most watch streams the process holds at once (--max-watches)",
        metrics.max_watches.clone(),
    );
    registry.register(
        "watch_refused",
        "Watch streams refused with RESOURCE_EXHAUSTED, by the bound that refused them: per_pod, per_account (tokens bound to no pod) or process",
        metrics.watch_refused.clone(),
    );
    registry.register(
        "watch_reauthentications",
        "Watch streams ended cleanly when their TokenReview answer ran out before the token, for the client to reconnect and be reviewed again (not a failure)",
        metrics.watch_reauthentications.clone(),
    );
    registry.register(
        "watch_update_retries",
        "Watch updates tried again because reading the new version failed for a passing reason (Vault unreachable, a share of Vault requests used up); the stream stays open",
        metrics.watch_update_retries.clone(),
    );
    registry.register(
        "store_cache_lookups",
        "Backend read cache lookups: hit, miss, or coalesced into a read in flight",
        metrics.read_cache.clone(),
    );
    registry.register(
        "backend_reads",
        "Calls made to the secret backend (Vault/OpenBao), retries included",
        metrics.backend_reads.clone(),
    );
    registry.register(
        "backend_errors",
        "Backend calls that failed after their retries, by kind",
        metrics.backend_errors.clone(),
    );
    registry.register(
        "backend_throttled",
        "Backend reads refused because the caller was over its fair share",
        metrics.backend_throttled.clone(),
    );
    registry.register(
        "backend_failovers",
        "Moves to another Vault node (addresses: the active node changed or the one in use failed)",
        metrics.backend_failovers.clone(),
    );
    registry.register(
        "backend_behind_answers",
        "Vault answers older than a version the broker had seen (a lagging standby), asked again",
        metrics.backend_behind.clone(),
    );
    registry.register(
        "backend_node",
        "1 for the Vault node the broker talks to, 0 for the other configured nodes",
        metrics.backend_node.clone(),
    );
    registry.register_with_unit(
        "rollout_propagation",
        "From a version written through the broker to each workload's applied acknowledgement",
        prometheus_client::registry::Unit::Seconds,
        metrics.propagation_seconds.clone(),
    );
    registry.register(
        "policy_reloads",
        "Policy file changes seen, by result (error: refused, the old policy stays)",
        metrics.policy_reloads.clone(),
    );
    registry.register(
        "audit_write_failures",
        "Audit records that could not be written",
        metrics.audit_write_failures.clone(),
    );
    registry.register(
        "lease_renewals",
        "Renewals of leased credentials asked of the backend, by result",
        metrics.lease_renewals.clone(),
    );
    registry.register(
        "leases",
        "Leased credentials held now, by state (failing: renewals fail, served until expiry)",
        metrics.leases.clone(),
    );
    registry.register_collector(Box::new(PollLagCollector));
    *metrics.registry.lock() = root;
    metrics
});
