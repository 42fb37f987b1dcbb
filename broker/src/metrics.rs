//! Prometheus metrics, served on the optional `--metrics-listen` endpoint.
//!
//! Labels are fixed, low-cardinality names only: an authentication failure
//! is counted under its [`AuthError::reason`](crate::auth::AuthError::reason),
//! never under anything taken from the token. The counters are process-wide
//! statics because failures are counted where errors become statuses
//! (`crate::error`), which sees no broker instance.

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        LazyLock, Mutex, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

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

struct Metrics {
    auth_failures: Family<ReasonLabel, Counter>,
    auth_cache: Family<CacheLabel, Counter>,
    requests: Family<RpcLabel, Counter>,
    request_seconds: HistogramFamily<RpcLabel>,
    open_watches: Gauge,
    max_watches: Gauge,
    watch_refused: Family<ReasonLabel, Counter>,
    watch_reauthentications: Counter,
    read_cache: Family<CacheLabel, Counter>,
    backend_reads: Counter,
    backend_errors: Family<KindLabel, Counter>,
    backend_throttled: Counter,
    propagation_seconds: Histogram,
    policy_reloads: Family<ResultLabel, Counter>,
    audit_write_failures: Counter,
    lease_renewals: Family<ResultLabel, Counter>,
    leases: Family<StateLabel, Gauge>,
    registry: Mutex<Registry>,
}

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

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        auth_failures: Family::default(),
        auth_cache: Family::default(),
        requests: Family::default(),
        request_seconds: Family::new_with_constructor(latency_histogram),
        open_watches: Gauge::default(),
        max_watches: Gauge::default(),
        watch_refused: Family::default(),
        watch_reauthentications: Counter::default(),
        read_cache: Family::default(),
        backend_reads: Counter::default(),
        backend_errors: Family::default(),
        backend_throttled: Counter::default(),
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
    *metrics
        .registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = root;
    metrics
});

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

/// The `rpc` label of a request path: `Service/Method` when the method is
/// one this process implements (read from the compiled-in descriptors) and
/// the answer is not `UNIMPLEMENTED`, else `unknown`. A caller cannot mint
/// label values, whatever code its request is answered with.
pub fn rpc_label(path: &str, code: tonic::Code) -> String {
    rpc_name(rpc_index(path), code).to_string()
}

/// The methods the `rpc` label may name, as `Service/Method`: every method
/// of the broker's, health's and reflection's services. Built once.
static KNOWN_METHODS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    use prost::Message;
    let mut methods = Vec::new();
    for set in [
        coffer_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        // Compiled in: a set that does not parse is a build bug, and its
        // methods are then counted as `unknown`.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let name = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    // A fixed, small set, made once for the process's life.
                    methods.push(&*Box::leak(name.into_boxed_str()));
                }
            }
        }
    }
    methods
});

/// The index of `path`'s method in [`KNOWN_METHODS`], or one past the end
/// for `unknown`.
pub fn rpc_index(path: &str) -> usize {
    let name = path.strip_prefix('/').unwrap_or(path);
    let known = &*KNOWN_METHODS;
    known.iter().position(|m| *m == name).unwrap_or(known.len())
}

fn rpc_name(index: usize, code: tonic::Code) -> &'static str {
    match KNOWN_METHODS.get(index) {
        Some(name) if code != tonic::Code::Unimplemented => name,
        _ => "unknown",
    }
}

/// The request counter and histogram of one (method, code), resolved on
/// first use so that a request costs two atomic updates, not two label
/// lookups with an owned label.
struct RequestSeries {
    count: Counter,
    seconds: Histogram,
}

/// By method index (the last is `unknown`), then by code.
static REQUEST_SERIES: LazyLock<Box<[[OnceLock<RequestSeries>; 17]]>> = LazyLock::new(|| {
    (0..=KNOWN_METHODS.len())
        .map(|_| std::array::from_fn(|_| OnceLock::new()))
        .collect()
});

/// The Prometheus-style name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts one answered gRPC request and its time to the response headers.
pub fn request(path: &str, code: tonic::Code, elapsed: Duration) {
    request_at(rpc_index(path), code, elapsed);
}

/// [`request`] for a path already looked up with [`rpc_index`].
pub fn request_at(rpc: usize, code: tonic::Code, elapsed: Duration) {
    let name = rpc_name(rpc, code);
    let rpc = if name == "unknown" {
        KNOWN_METHODS.len()
    } else {
        rpc
    };
    let by_code = &REQUEST_SERIES[rpc.min(KNOWN_METHODS.len())];
    // `Code` is 0..=16; anything else would be counted as UNKNOWN.
    let slot = usize::try_from(code as i32)
        .ok()
        .filter(|&i| i < by_code.len())
        .unwrap_or(tonic::Code::Unknown as usize);
    let series = by_code[slot].get_or_init(|| {
        let label = RpcLabel {
            rpc: name.to_string(),
            code: code_name(code),
        };
        RequestSeries {
            count: METRICS.requests.get_or_create(&label).clone(),
            seconds: METRICS.request_seconds.get_or_create(&label).clone(),
        }
    });
    series.count.inc();
    series.seconds.observe(elapsed.as_secs_f64());
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

/// Counts one read refused for the caller's fair share.
pub fn backend_throttled() {
    METRICS.backend_throttled.inc();
}

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

/// `coffer_backend_poll_lag_seconds`: how long ago a poller last succeeded
/// while pollers run; 0 when nothing is polled.
#[derive(Debug)]
struct PollLagCollector;

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
struct ProcessCollector;

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

/// Serves `GET /metrics` over plain HTTP/1 on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                Ok::<_, Infallible>(respond(&request))
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics: connection ended");
            }
        });
    }
}

fn respond(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        let mut missing = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *missing.status_mut() = StatusCode::NOT_FOUND;
        return missing;
    }
    let mut ok = Response::new(Full::new(Bytes::from(render())));
    ok.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unimplemented_paths_share_one_label() {
        assert_eq!(
            rpc_label("/x.Y/Z123", tonic::Code::Unimplemented),
            "unknown"
        );
        // Whatever the code, a path the broker does not serve names no
        // series of its own.
        assert_eq!(
            rpc_label("/x.Y/Z123", tonic::Code::ResourceExhausted),
            "unknown"
        );
        for served in [
            "/coffer.v1.SecretOperator/PutSecret",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(rpc_label(served, tonic::Code::Ok), &served[1..]);
        }
        assert_eq!(
            rpc_label(
                "/coffer.v1.SecretBroker/GetSecret",
                tonic::Code::PermissionDenied
            ),
            "coffer.v1.SecretBroker/GetSecret"
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
