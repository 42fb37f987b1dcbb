//! Bounds on what callers can hold open: watch streams per pod, per
//! service account for tokens bound to no pod, and in the whole process.
//! (Requests in flight per connection are bounded in `server.rs`.)
//!
//! Every pod of a Deployment shares one service account, so a bound per
//! service account would let a 200-replica service watch with 64 pods and
//! lose rotations on the rest. The bound is therefore per pod (the token's
//! `kubernetes.io.pod.uid`), and memory is protected by a bound on the
//! process's streams, sized from the memory the broker may use.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use coffer_proto::v1;
use parking_lot::Mutex;

use super::{Broker, Call};
use crate::{
    audit::Outcome, auth::WorkloadIdentity, error::ApiError, path::SecretPath, store::Tenant,
};

/// What one caller, and the whole process, may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open `WatchSecrets` streams per pod (issuer and the token's pod
    /// uid). The next one is refused with `RESOURCE_EXHAUSTED`.
    pub watches_per_pod: usize,
    /// Open streams of tokens bound to no pod, per service account
    /// (issuer, namespace and service account): such callers cannot be
    /// told apart, so they share one bound.
    pub watches_per_account: usize,
    /// Open watch streams in the whole process (see [`default_max_watches`]).
    pub max_watches: usize,
    /// Requests one connection may have in flight at once (0: unbounded);
    /// the excess is refused with `RESOURCE_EXHAUSTED`.
    pub requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            watches_per_pod: 64,
            watches_per_account: 64,
            max_watches: DEFAULT_MAX_WATCHES,
            requests_per_connection: 128,
        }
    }
}

/// What one watcher costs the broker, as budgeted: measured, the broker's
/// resident memory grew by 41 KB per watcher with 5,000 watchers each on
/// its own TLS connection (the sidecar's case; 34 KB over plaintext, 13 KB
/// per stream when 50 streams share a connection), with a small secret.
/// Rounded up to 64 KiB for larger values and the allocator's slack.
/// `tests/e2e/limits/scale_watchers.rs` measures it
/// (`measure_the_memory_of_a_watch_on_its_own_connection`, run by hand).
pub const BYTES_PER_WATCH: u64 = 64 * 1024;

/// The share of the broker's memory limit its watch streams may take; the
/// rest is for the read cache, the verification cache, the rollout table
/// and the allocator's slack.
const WATCH_MEMORY_SHARE: f64 = 0.5;

/// The process-wide bound when no memory limit is known (no cgroup limit):
/// what 3 GiB hold at [`BYTES_PER_WATCH`] (2 GiB as measured), so that a
/// broker with no limit set still stops before it exhausts a typical node.
pub const DEFAULT_MAX_WATCHES: usize = 50_000;

/// The process-wide bound for a memory limit of `limit_bytes` (none: no
/// limit known, [`DEFAULT_MAX_WATCHES`]): [`WATCH_MEMORY_SHARE`] of it at
/// [`BYTES_PER_WATCH`] each, at least one.
pub fn max_watches_for_memory(limit_bytes: Option<u64>) -> usize {
    match limit_bytes {
        None => DEFAULT_MAX_WATCHES,
        Some(limit) => {
            let streams = (limit as f64 * WATCH_MEMORY_SHARE) / BYTES_PER_WATCH as f64;
            // Saturating float-to-int conversion; a tiny limit still allows one.
            (streams as usize).max(1)
        }
    }
}

/// The memory limit of the broker's cgroup: `memory.max` (cgroup v2), else
/// `memory/memory.limit_in_bytes` (v1); `None` when there is none, it says
/// `max`, or it is unreadable.
pub fn cgroup_memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    parse_memory_limit(&v2.or_else(v1)?)
}

/// A cgroup memory limit's text: bytes, or `max`. v1 says "no limit" with
/// a number near `i64::MAX`, taken as none.
fn parse_memory_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

/// The process-wide bound by default: sized from the cgroup memory limit
/// when there is one (see [`max_watches_for_memory`]).
pub fn default_max_watches() -> usize {
    max_watches_for_memory(cgroup_memory_limit())
}

/// Which bound refused a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The pod holds its bound.
    PerPod,
    /// The service account's pod-less tokens hold their bound.
    PerAccount,
    /// The process holds its bound.
    Process,
}

impl Refusal {
    /// The `reason` label of `coffer_watch_refused_total`.
    fn as_str(self) -> &'static str {
        match self {
            Self::PerPod => "per_pod",
            Self::PerAccount => "per_account",
            Self::Process => "process",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Watches refused, by [`Refusal`] (`[per pod, per account, process]`).
pub(super) type RefusalCounts = [u64; 3];

/// The most paths whose refusals are counted one by one for `status`; the
/// refusals of paths beyond it are counted in the totals only.
const MAX_REFUSED_PATHS: usize = 4096;

/// Open watch streams per pod or service account and in all, and the
/// watches refused.
#[derive(Default)]
pub(super) struct WatchCounts {
    open: Arc<Mutex<Open>>,
    refused: Mutex<Refused>,
    /// When a refusal was last logged at `warn`, per [`Refusal`]
    /// (milliseconds after `logged_since`): a flood is logged once a second.
    logged_at: [AtomicU64; 3],
    logged_since: std::sync::OnceLock<Instant>,
}

#[derive(Default)]
struct Open {
    /// By [`slot_key`]; a key is removed when its count drops to zero, so
    /// the map never holds more keys than streams are open.
    by_key: HashMap<String, usize>,
    total: usize,
}

#[derive(Default)]
struct Refused {
    total: RefusalCounts,
    /// By base path, bounded by [`MAX_REFUSED_PATHS`].
    by_path: HashMap<String, RefusalCounts>,
}

/// One open watch; its place is given back when this is dropped, however
/// the stream ends.
pub(super) struct WatchSlot {
    open: Arc<Mutex<Open>>,
    key: String,
}

/// The bound a caller's streams count against, and its key: the pod (by
/// issuer and uid) for a pod-bound token, else the service account.
fn slot_key(who: &WorkloadIdentity) -> (String, Refusal) {
    match who.pod_uid.as_deref().filter(|uid| !uid.is_empty()) {
        // Kinds are prefixed so that no pod key can equal an account key.
        Some(uid) => (format!("pod {} {uid}", who.issuer), Refusal::PerPod),
        None => (format!("account {}", tenant(who)), Refusal::PerAccount),
    }
}

impl WatchCounts {
    /// Takes a place for `key` (bounded by `per_key`) within the process's
    /// `total`, or says which bound refused it.
    fn acquire(
        &self,
        key: String,
        per_key: usize,
        kind: Refusal,
        total: usize,
    ) -> Result<WatchSlot, Refusal> {
        let mut open = self.open.lock();
        if open.by_key.get(&key).copied().unwrap_or(0) >= per_key {
            return Err(kind);
        }
        if open.total >= total {
            return Err(Refusal::Process);
        }
        open.total += 1;
        *open.by_key.entry(key.clone()).or_insert(0) += 1;
        Ok(WatchSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }

    /// Counts a refused watch of `paths`.
    fn refused(&self, why: Refusal, paths: &[SecretPath]) {
        let mut refused = self.refused.lock();
        refused.total[why.index()] += 1;
        for path in paths {
            let full = refused.by_path.len() >= MAX_REFUSED_PATHS;
            match refused.by_path.get_mut(path.base()) {
                Some(counts) => counts[why.index()] += 1,
                None if full => {}
                None => {
                    let mut counts = RefusalCounts::default();
                    counts[why.index()] = 1;
                    refused.by_path.insert(path.base().to_string(), counts);
                }
            }
        }
    }

    /// Watches of `path` refused since the start, and of every path.
    pub(super) fn refusals(&self, path: &str) -> (RefusalCounts, RefusalCounts) {
        let refused = self.refused.lock();
        (
            refused.by_path.get(path).copied().unwrap_or_default(),
            refused.total,
        )
    }

    /// Whether a refusal for `why` should be logged at `warn` now: at most
    /// once a second per bound, so a flood of refused reconnects does not
    /// flood the log (every refusal is counted, and audited).
    fn log_now(&self, why: Refusal) -> bool {
        let since = *self.logged_since.get_or_init(Instant::now);
        let now = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = &self.logged_at[why.index()];
        let previous = last.load(Ordering::Relaxed);
        (previous == 0 || now.saturating_sub(previous) >= 1000)
            && last
                .compare_exchange(previous, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Streams open now (for tests).
    #[cfg(test)]
    fn total(&self) -> usize {
        self.open.lock().total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_key.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_key.remove(&self.key);
            }
        }
    }
}

/// The key a store shares its backend budget by: one per service account
/// of one issuer, so the pods of one workload share one share.
pub(super) fn tenant(who: &WorkloadIdentity) -> String {
    tenant_of(who).key()
}

/// `who` as a store's backend budget counts it.
pub(super) fn tenant_of(who: &WorkloadIdentity) -> Tenant<'_> {
    Tenant {
        issuer: &who.issuer,
        namespace: &who.namespace,
        service_account: &who.service_account,
    }
}

impl Broker {
    /// Bounds what callers can hold open (see [`Limits`]).
    pub fn with_limits(self, limits: Limits) -> Self {
        *self.inner.limits.write() = limits;
        crate::metrics::set_max_watches(limits.max_watches);
        self
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        *self.inner.limits.read()
    }

    /// A watch slot for `who`'s watch of `paths`, or `RESOURCE_EXHAUSTED`
    /// (audited, counted) when the pod, the service account's pod-less
    /// tokens or the process already hold their bound.
    pub(super) async fn acquire_watch_slot(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        paths: &[SecretPath],
    ) -> Result<WatchSlot, ApiError> {
        let limits = self.limits();
        let (key, kind) = slot_key(who);
        let per_key = match kind {
            Refusal::PerPod => limits.watches_per_pod,
            _ => limits.watches_per_account,
        };
        let watches = &self.inner.watches;
        let why = match watches.acquire(key, per_key, kind, limits.max_watches) {
            Ok(slot) => return Ok(slot),
            Err(why) => why,
        };
        watches.refused(why, paths);
        crate::metrics::watch_refused(why.as_str());
        if watches.log_now(why) {
            tracing::warn!(
                namespace = %who.namespace,
                service_account = %who.service_account,
                pod = who.pod_name.as_deref().unwrap_or(""),
                bound = why.as_str(),
                max = match why {
                    Refusal::Process => limits.max_watches,
                    _ => per_key,
                },
                "watch refused: too many open watches (logged at most once a second per bound; \
                 see coffer_watch_refused_total)"
            );
        } else {
            tracing::debug!(
                namespace = %who.namespace,
                service_account = %who.service_account,
                bound = why.as_str(),
                "watch refused: too many open watches"
            );
        }
        let reason = match why {
            Refusal::Process => "watch_capacity",
            _ => "too_many_watches",
        };
        self.audit(&call.event(Some(who), None, None, Outcome::Deny, reason))
            .await?;
        Err(match why {
            Refusal::Process => ApiError::WatchCapacity,
            _ => ApiError::TooManyWatches,
        })
    }

    /// A `RotationStatus` answer holding only the watches of `path` this
    /// replica refused since it started, and those of every path.
    pub(super) fn watch_refusals_wire(&self, path: &str) -> v1::RotationStatusResponse {
        let (this_path, all) = self.inner.watches.refusals(path);
        let wire = |[per_pod, per_account, process]: RefusalCounts| {
            Some(v1::WatchRefusals {
                per_pod,
                per_account,
                process,
            })
        };
        v1::RotationStatusResponse {
            watches_refused: wire(this_path),
            watches_refused_all_paths: wire(all),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(pod_uid: Option<&str>) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: "https://k8s.test".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            service_account_uid: None,
            pod_name: pod_uid.map(|_| "web-0".into()),
            pod_uid: pod_uid.map(Into::into),
        }
    }

    #[test]
    fn tenant_names_issuer_namespace_and_account() {
        assert_eq!(tenant(&who(Some("u-0"))), "https://k8s.test shop/web");
    }

    #[test]
    fn a_pod_bound_token_counts_against_its_pod_and_a_podless_one_against_its_account() {
        assert_eq!(
            slot_key(&who(Some("u-0"))),
            ("pod https://k8s.test u-0".to_string(), Refusal::PerPod)
        );
        assert_eq!(
            slot_key(&who(None)),
            (
                "account https://k8s.test shop/web".to_string(),
                Refusal::PerAccount
            )
        );
        // An empty uid binds nothing.
        assert_eq!(slot_key(&who(Some(""))).1, Refusal::PerAccount);
    }

    #[test]
    fn places_are_bounded_per_key_and_in_all_and_given_back_on_drop() {
        let counts = WatchCounts::default();
        let take = |key: &str| counts.acquire(key.into(), 3, Refusal::PerPod, 5);
        let held: Vec<_> = (0..3).map(|_| take("a").unwrap()).collect();
        assert_eq!(take("a").err(), Some(Refusal::PerPod));
        let other: Vec<_> = (0..2).map(|_| take("b").unwrap()).collect();
        assert_eq!(
            take("c").err(),
            Some(Refusal::Process),
            "five open in all: the process is full"
        );
        assert_eq!(counts.total(), 5);
        drop(held);
        drop(other);
        assert_eq!(counts.total(), 0);
        assert!(take("a").is_ok());
        assert!(
            counts.open.lock().by_key.len() <= 1,
            "empty keys are removed"
        );
    }

    #[test]
    fn refusals_are_counted_per_path_within_a_bound() {
        let counts = WatchCounts::default();
        let path = |p: &str| SecretPath::parse(p).unwrap();
        counts.refused(Refusal::Process, &[path("shop/db"), path("shop/api#key")]);
        counts.refused(Refusal::PerPod, &[path("shop/db")]);
        assert_eq!(counts.refusals("shop/db"), ([1, 0, 1], [1, 0, 1]));
        assert_eq!(counts.refusals("shop/api").0, [0, 0, 1]);
        for n in 0..2 * MAX_REFUSED_PATHS {
            counts.refused(Refusal::PerAccount, &[path(&format!("p/{n}"))]);
        }
        let refused = counts.refused.lock();
        assert_eq!(refused.by_path.len(), MAX_REFUSED_PATHS);
        assert_eq!(refused.total[1], 2 * MAX_REFUSED_PATHS as u64);
    }

    #[test]
    fn the_process_bound_is_half_the_memory_limit_at_the_measured_cost() {
        assert_eq!(max_watches_for_memory(None), DEFAULT_MAX_WATCHES);
        let gib = 1u64 << 30;
        assert_eq!(
            max_watches_for_memory(Some(gib)),
            (gib / 2 / BYTES_PER_WATCH) as usize
        );
        assert_eq!(max_watches_for_memory(Some(1)), 1);
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(parse_memory_limit("536870912\n"), Some(536_870_912));
        assert_eq!(parse_memory_limit("9223372036854771712"), None);
    }

    #[test]
    fn a_refusal_flood_is_logged_once_a_second() {
        let counts = WatchCounts::default();
        assert!(counts.log_now(Refusal::Process));
        assert!(!counts.log_now(Refusal::Process));
        assert!(counts.log_now(Refusal::PerPod), "each bound on its own");
    }
}
