//! The rollout table behind `RotationStatus`: which workloads watch each
//! path right now (the expected set), and what each last acknowledged.
//!
//! A workload is keyed by its issuer and pod uid, or by its issuer,
//! namespace, service account and pod name when the token names no uid, so
//! two issuers' `shop/web` never share an entry. Callers are authorized
//! before anything is recorded (see `workload.rs`).
//!
//! Bounds, because any authorized workload can grow the table: at most
//! [`AckLimits::per_path`] entries per path and [`AckLimits::total`] in all;
//! when full, the oldest acknowledgement (of that path, or of the whole table)
//! is evicted, so a live pod's fresh acknowledgement always lands. An entry
//! expires [`AckLimits::ttl`] after its acknowledgement unless the workload
//! still watches the path, so `status` does not list dead pods forever.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use coffer_proto::v1;
use parking_lot::Mutex;

use crate::{auth::WorkloadIdentity, error::ApiError, path::SecretPath};

/// The most acknowledgements one `AckSecrets` call may carry.
pub(super) const MAX_ACKS_PER_CALL: usize = super::MAX_PATHS_PER_CALL;

/// One call's acknowledgements, one per base path (`app/db#key` counts for
/// `app/db`; of several for one path the last named wins, in the place of
/// the first), after refusing a call that names more than
/// [`MAX_ACKS_PER_CALL`] or a bad path. Each one left is authorized and
/// audited, so a call naming one path 256 times costs one decision and one
/// record, not 256.
pub(super) fn distinct(
    applied: Vec<v1::AppliedVersion>,
) -> Result<Vec<(SecretPath, v1::AppliedVersion)>, ApiError> {
    if applied.len() > MAX_ACKS_PER_CALL {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_ACKS_PER_CALL} acknowledgements per call"
        )));
    }
    let mut out: Vec<(SecretPath, v1::AppliedVersion)> = Vec::with_capacity(applied.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(applied.len());
    for item in applied {
        let path = SecretPath::parse(&item.path)?;
        match index.get(path.base()) {
            Some(&at) => out[at] = (path, item),
            None => {
                index.insert(path.base().to_string(), out.len());
                out.push((path, item));
            }
        }
    }
    Ok(out)
}

/// How large the table may grow and how long an acknowledgement counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckLimits {
    /// Entries kept per path.
    pub per_path: usize,
    /// Entries kept in all.
    pub total: usize,
    /// How long an acknowledgement of a workload that no longer watches the
    /// path is kept.
    pub ttl: Duration,
}

impl Default for AckLimits {
    fn default() -> Self {
        Self {
            // A Deployment of 10,000 pods on one shared path fits (the soak
            // of docs/reliability.md: at 4,096 the table evicted and warned
            // on every rotation).
            per_path: 16_384,
            total: 65_536,
            // A projected service-account token's usual lifetime.
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Who a workload is, as far as the table is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PodKey {
    Uid {
        issuer: String,
        uid: String,
    },
    Name {
        issuer: String,
        namespace: String,
        service_account: String,
        pod: String,
    },
}

impl PodKey {
    fn of(who: &WorkloadIdentity) -> Self {
        match &who.pod_uid {
            Some(uid) if !uid.is_empty() => Self::Uid {
                issuer: who.issuer.clone(),
                uid: uid.clone(),
            },
            _ => Self::Name {
                issuer: who.issuer.clone(),
                namespace: who.namespace.clone(),
                service_account: who.service_account.clone(),
                pod: who.pod_name.clone().unwrap_or_default(),
            },
        }
    }
}

/// How the workload is shown to operators.
#[derive(Debug, Clone)]
struct Workload {
    issuer: String,
    namespace: String,
    service_account: String,
    pod: String,
    pod_uid: String,
}

impl Workload {
    fn of(who: &WorkloadIdentity) -> Self {
        Self {
            issuer: who.issuer.clone(),
            namespace: who.namespace.clone(),
            service_account: who.service_account.clone(),
            pod: who.pod_name.clone().unwrap_or_default(),
            pod_uid: who.pod_uid.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
struct Ack {
    version: u64,
    state: v1::ApplyState,
    reason: String,
    at: SystemTime,
}

#[derive(Debug, Clone)]
struct Entry {
    workload: Workload,
    /// Open watch streams of this workload on this path.
    watching: usize,
    ack: Option<Ack>,
}

impl Entry {
    fn last_seen(&self) -> SystemTime {
        self.ack.as_ref().map_or(SystemTime::UNIX_EPOCH, |a| a.at)
    }

    fn expired(&self, now: SystemTime, ttl: Duration) -> bool {
        self.watching == 0
            && self
                .ack
                .as_ref()
                .is_none_or(|a| now.duration_since(a.at).unwrap_or_default() > ttl)
    }
}

#[derive(Default)]
struct Table {
    by_path: HashMap<String, HashMap<PodKey, Entry>>,
    /// The last version the broker wrote of each base, and when.
    published: HashMap<String, (u64, SystemTime)>,
    entries: usize,
    limits: AckLimits,
    /// Evictions since the last warning, and when that was: a table kept
    /// full by a fleet larger than its bound warns once a minute with the
    /// count, not once per eviction.
    evicted: u64,
    warned_at: Option<std::time::Instant>,
}

/// How often a full table says so.
const EVICTION_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Workloads by base path.
pub(super) struct AckTable {
    table: Arc<Mutex<Table>>,
}

impl Default for AckTable {
    fn default() -> Self {
        Self::new(AckLimits::default())
    }
}

/// A sanitized failure reason: short, printable, one line.
fn clean_reason(reason: &str) -> String {
    reason
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect()
}

/// What [`AckTable::status`] reports for one path.
pub(super) struct Rollout {
    pub(super) workloads: Vec<v1::WorkloadVersion>,
    pub(super) expected: u32,
    pub(super) applied: u32,
    pub(super) failed: u32,
    pub(super) pending: u32,
}

impl AckTable {
    pub(super) fn new(limits: AckLimits) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                limits,
                ..Table::default()
            })),
        }
    }

    /// Changes the bounds; entries over them go as new ones arrive.
    pub(super) fn set_limits(&self, limits: AckLimits) {
        self.table.lock().limits = limits;
    }

    /// Records what an authorized workload reports having applied. Paths are
    /// recorded by their base (`app/db#key` counts for `app/db`).
    pub(super) fn record(
        &self,
        who: &WorkloadIdentity,
        applied: &[(SecretPath, v1::AppliedVersion)],
    ) {
        let key = PodKey::of(who);
        let now = SystemTime::now();
        let mut table = self.table.lock();
        for (path, item) in applied {
            let state = match item.state() {
                v1::ApplyState::Failed => v1::ApplyState::Failed,
                _ => v1::ApplyState::Applied,
            };
            let reason = if state == v1::ApplyState::Failed {
                clean_reason(&item.reason)
            } else {
                String::new()
            };
            tracing::info!(
                target: "coffer::ack",
                issuer = %who.issuer,
                namespace = %who.namespace,
                service_account = %who.service_account,
                pod = who.pod_name.as_deref().unwrap_or(""),
                path = %path,
                version = item.version,
                state = state.as_str_name(),
                reason = %reason,
                "workload acknowledged a version"
            );
            let ack = Ack {
                version: item.version,
                state,
                reason,
                at: now,
            };
            let published = table.published.get(path.base()).copied();
            let entry = table.entry_for(path.base(), &key, who, now);
            let repeated = entry
                .ack
                .as_ref()
                .is_some_and(|a| a.version == item.version && a.state == v1::ApplyState::Applied);
            if let Some((version, at)) = published
                && version == item.version
                && state == v1::ApplyState::Applied
                && !repeated
            {
                crate::metrics::propagation(now.duration_since(at).unwrap_or_default());
            }
            entry.ack = Some(ack);
        }
    }

    /// Notes that the broker wrote `version` of `base` now, so each applied
    /// acknowledgement of it observes `coffer_rollout_propagation_seconds`.
    /// Bounded like the table: beyond `total` bases, new ones are not noted.
    pub(super) fn published(&self, base: &str, version: u64) {
        let mut table = self.table.lock();
        let total = table.limits.total;
        if table.published.len() < total || table.published.contains_key(base) {
            table
                .published
                .insert(base.to_string(), (version, SystemTime::now()));
        }
    }

    /// Registers an open watch of `paths` by `who`, until the guard drops.
    pub(super) fn watching(&self, who: &WorkloadIdentity, paths: &[SecretPath]) -> WatchGuard {
        let key = PodKey::of(who);
        let now = SystemTime::now();
        let mut bases: Vec<String> = paths.iter().map(|p| p.base().to_string()).collect();
        bases.sort();
        bases.dedup();
        let mut table = self.table.lock();
        for base in &bases {
            table.entry_for(base, &key, who, now).watching += 1;
        }
        WatchGuard {
            table: Arc::clone(&self.table),
            key,
            bases,
            _open: crate::metrics::watch_opened(),
        }
    }

    /// The rollout of `base` against its `current` version (created at
    /// `created`): every watching workload, and those not watching whose
    /// acknowledgement has not expired; sorted by namespace and pod.
    pub(super) fn status(&self, base: &str, current: u64, created: Option<SystemTime>) -> Rollout {
        let now = SystemTime::now();
        let mut table = self.table.lock();
        table.prune(base, now);
        let mut rollout = Rollout {
            workloads: Vec::new(),
            expected: 0,
            applied: 0,
            failed: 0,
            pending: 0,
        };
        let Some(entries) = table.by_path.get(base) else {
            return rollout;
        };
        for entry in entries.values() {
            let at_current = entry.ack.as_ref().filter(|a| a.version == current);
            let state = match at_current {
                Some(a) => a.state,
                None if entry.watching > 0 => v1::ApplyState::Pending,
                None => entry
                    .ack
                    .as_ref()
                    .map_or(v1::ApplyState::Pending, |a| a.state),
            };
            if entry.watching > 0 {
                rollout.expected += 1;
                match state {
                    v1::ApplyState::Applied => rollout.applied += 1,
                    v1::ApplyState::Failed => rollout.failed += 1,
                    _ => rollout.pending += 1,
                }
            }
            let time_to_apply = match (at_current, created) {
                (Some(a), Some(created)) if a.state == v1::ApplyState::Applied => {
                    a.at.duration_since(created)
                        .ok()
                        .and_then(|d| prost_types::Duration::try_from(d).ok())
                }
                _ => None,
            };
            let w = &entry.workload;
            rollout.workloads.push(v1::WorkloadVersion {
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                pod: w.pod.clone(),
                version: entry.ack.as_ref().map_or(0, |a| a.version),
                state: state as i32,
                acknowledged_at: entry.ack.as_ref().map(|a| a.at.into()),
                issuer: w.issuer.clone(),
                pod_uid: w.pod_uid.clone(),
                reason: entry
                    .ack
                    .as_ref()
                    .map(|a| a.reason.clone())
                    .unwrap_or_default(),
                watching: entry.watching > 0,
                time_to_apply,
            });
        }
        rollout.workloads.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.pod_uid).cmp(&(&b.namespace, &b.pod, &b.pod_uid))
        });
        rollout
    }
}

impl Table {
    /// The entry of `key` on `base`, made room for if new.
    fn entry_for(
        &mut self,
        base: &str,
        key: &PodKey,
        who: &WorkloadIdentity,
        now: SystemTime,
    ) -> &mut Entry {
        let limits = self.limits;
        let exists = self
            .by_path
            .get(base)
            .is_some_and(|entries| entries.contains_key(key));
        if !exists {
            self.prune(base, now);
            let on_path = self.by_path.get(base).map_or(0, HashMap::len);
            if on_path >= limits.per_path.max(1) {
                self.evict_oldest(Some(base));
            }
            if self.entries >= limits.total.max(1) {
                self.evict_oldest(None);
            }
            self.entries += 1;
        }
        self.by_path
            .entry(base.to_string())
            .or_default()
            .entry(key.clone())
            .or_insert_with(|| Entry {
                workload: Workload::of(who),
                watching: 0,
                ack: None,
            })
    }

    /// Drops the expired entries of `base`.
    fn prune(&mut self, base: &str, now: SystemTime) {
        let ttl = self.limits.ttl;
        if let Some(entries) = self.by_path.get_mut(base) {
            let before = entries.len();
            entries.retain(|_, e| !e.expired(now, ttl));
            self.entries -= before - entries.len();
            if entries.is_empty() {
                self.by_path.remove(base);
            }
        }
    }

    /// Evicts the entry with the oldest acknowledgement, of `base` or of all
    /// paths, preferring workloads that no longer watch.
    fn evict_oldest(&mut self, base: Option<&str>) {
        let victim = self
            .by_path
            .iter()
            .filter(|(path, _)| base.is_none_or(|b| b == path.as_str()))
            .flat_map(|(path, entries)| entries.iter().map(move |(k, e)| (path, k, e)))
            .min_by_key(|(_, _, e)| (e.watching > 0, e.last_seen()))
            .map(|(path, key, _)| (path.clone(), key.clone()));
        if let Some((path, key)) = victim {
            self.evicted += 1;
            let now = std::time::Instant::now();
            if self
                .warned_at
                .is_none_or(|at| now.duration_since(at) >= EVICTION_WARNING_EVERY)
            {
                tracing::warn!(
                    path = %path,
                    evicted = self.evicted,
                    per_path = self.limits.per_path,
                    total = self.limits.total,
                    "acknowledgement table full: evicting the oldest entries (`status` misses them); counted since the last such warning"
                );
                self.warned_at = Some(now);
                self.evicted = 0;
            }
            self.remove(&path, &key);
        }
    }

    fn remove(&mut self, base: &str, key: &PodKey) {
        if let Some(entries) = self.by_path.get_mut(base) {
            if entries.remove(key).is_some() {
                self.entries -= 1;
            }
            if entries.is_empty() {
                self.by_path.remove(base);
            }
        }
    }
}

/// An open watch in the rollout table; dropping it ends the registration.
pub(super) struct WatchGuard {
    table: Arc<Mutex<Table>>,
    key: PodKey,
    bases: Vec<String>,
    /// Counts the stream in `coffer_watch_streams_open`.
    _open: crate::metrics::WatchOpen,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        for base in &self.bases {
            let Some(entry) = table
                .by_path
                .get_mut(base)
                .and_then(|entries| entries.get_mut(&self.key))
            else {
                continue;
            };
            entry.watching = entry.watching.saturating_sub(1);
            // A watcher that never acknowledged leaves no trace.
            if entry.watching == 0 && entry.ack.is_none() {
                table.remove(base, &self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(issuer: &str, name: &str, uid: Option<&str>) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: issuer.into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            service_account_uid: None,
            pod_name: Some(name.into()),
            pod_uid: uid.map(str::to_string),
        }
    }

    fn ack(path: &str, version: u64, state: v1::ApplyState) -> (SecretPath, v1::AppliedVersion) {
        (
            SecretPath::parse(path).unwrap(),
            v1::AppliedVersion {
                path: path.into(),
                version,
                state: state as i32,
                reason: "no space\n\x1b[31mleft".into(),
            },
        )
    }

    #[test]
    fn one_call_acknowledges_each_path_once_and_is_bounded() {
        let item = |path: &str, version| v1::AppliedVersion {
            path: path.into(),
            version,
            state: v1::ApplyState::Applied as i32,
            reason: String::new(),
        };
        let mut many: Vec<_> = (0..MAX_ACKS_PER_CALL as u64)
            .map(|v| item("shop/db", v))
            .collect();
        many[1] = item("shop/api", 9);
        many.push(item("shop/db#password", 300));
        assert!(matches!(
            distinct(many.clone()),
            Err(ApiError::InvalidArgument(_))
        ));
        many.pop();
        let kept = distinct(many).unwrap();
        let kept: Vec<(String, u64)> = kept
            .iter()
            .map(|(p, a)| (p.to_string(), a.version))
            .collect();
        assert_eq!(
            kept,
            [
                ("shop/db".to_string(), MAX_ACKS_PER_CALL as u64 - 1),
                ("shop/api".to_string(), 9)
            ]
        );
        let keyed = distinct(vec![item("shop/db", 1), item("shop/db#password", 2)]).unwrap();
        assert_eq!(keyed.len(), 1);
        assert_eq!(keyed[0].1.version, 2);
        assert!(distinct(vec![item("../x", 1)]).is_err());
    }

    #[test]
    fn pods_of_two_issuers_with_one_name_are_two_entries() {
        let table = AckTable::default();
        table.record(
            &pod("a", "web-0", None),
            &[ack("shop/db", 1, v1::ApplyState::Applied)],
        );
        table.record(
            &pod("b", "web-0", None),
            &[ack("shop/db", 1, v1::ApplyState::Applied)],
        );
        let rollout = table.status("shop/db", 1, None);
        let issuers: Vec<&str> = rollout
            .workloads
            .iter()
            .map(|w| w.issuer.as_str())
            .collect();
        assert_eq!(rollout.workloads.len(), 2, "{issuers:?}");
    }

    #[test]
    fn a_pod_is_keyed_by_uid_so_a_renamed_token_updates_one_entry() {
        let table = AckTable::default();
        table.record(
            &pod("a", "web-0", Some("u1")),
            &[ack("shop/db", 1, v1::ApplyState::Applied)],
        );
        table.record(
            &pod("a", "web-x", Some("u1")),
            &[ack("shop/db#k", 2, v1::ApplyState::Applied)],
        );
        let rollout = table.status("shop/db", 2, None);
        assert_eq!(rollout.workloads.len(), 1);
        assert_eq!(rollout.workloads[0].version, 2);
    }

    #[test]
    fn the_table_evicts_the_oldest_when_a_path_is_full() {
        let table = AckTable::new(AckLimits {
            per_path: 2,
            total: 100,
            ttl: Duration::from_secs(60),
        });
        for name in ["p1", "p2", "p3"] {
            table.record(
                &pod("a", name, None),
                &[ack("shop/db", 1, v1::ApplyState::Applied)],
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let pods: Vec<String> = table
            .status("shop/db", 1, None)
            .workloads
            .into_iter()
            .map(|w| w.pod)
            .collect();
        assert_eq!(pods, ["p2", "p3"]);
    }

    #[test]
    fn a_full_table_warns_once_a_minute_with_the_count_not_per_eviction() {
        let table = AckTable::new(AckLimits {
            per_path: 2,
            total: 100,
            ttl: Duration::from_secs(60),
        });
        for i in 0..50 {
            table.record(
                &pod("a", &format!("p{i}"), None),
                &[ack("shop/shared", 1, v1::ApplyState::Applied)],
            );
        }
        let inner = table.table.lock();
        // 48 evictions: the first warned (and reset the count), the other
        // 47 wait for the next warning, a minute later.
        assert!(inner.warned_at.is_some());
        assert_eq!(inner.evicted, 47);
        assert_eq!(inner.entries, 2);
    }

    #[test]
    fn a_deployment_of_ten_thousand_pods_on_one_path_fits_by_default() {
        let table = AckTable::default();
        for i in 0..10_000 {
            table.record(
                &pod("a", &format!("web-{i}"), None),
                &[ack("shop/shared", 1, v1::ApplyState::Applied)],
            );
        }
        assert_eq!(table.status("shop/shared", 1, None).workloads.len(), 10_000);
        assert!(table.table.lock().warned_at.is_none(), "nothing evicted");
    }

    #[test]
    fn the_table_stays_under_its_total_bound() {
        let table = AckTable::new(AckLimits {
            per_path: 100,
            total: 3,
            ttl: Duration::from_secs(60),
        });
        for i in 0..10 {
            table.record(
                &pod("a", "p", None),
                &[ack(&format!("shop/s{i}"), 1, v1::ApplyState::Applied)],
            );
        }
        assert_eq!(table.table.lock().entries, 3);
        let kept: usize = (0..10)
            .map(|i| table.status(&format!("shop/s{i}"), 1, None).workloads.len())
            .sum();
        assert_eq!(kept, 3);
    }

    #[test]
    fn acknowledgements_expire_unless_the_pod_still_watches() {
        let table = AckTable::new(AckLimits {
            per_path: 100,
            total: 100,
            ttl: Duration::from_millis(50),
        });
        let gone = pod("a", "gone", None);
        let live = pod("a", "live", None);
        let guard = table.watching(&live, &[SecretPath::parse("shop/db").unwrap()]);
        table.record(&gone, &[ack("shop/db", 1, v1::ApplyState::Applied)]);
        table.record(&live, &[ack("shop/db", 1, v1::ApplyState::Applied)]);
        std::thread::sleep(Duration::from_millis(80));
        let pods: Vec<String> = table
            .status("shop/db", 1, None)
            .workloads
            .into_iter()
            .map(|w| w.pod)
            .collect();
        assert_eq!(pods, ["live"]);
        drop(guard);
        std::thread::sleep(Duration::from_millis(5));
        assert!(table.status("shop/db", 1, None).workloads.is_empty());
        assert_eq!(table.table.lock().entries, 0);
    }

    #[test]
    fn watchers_are_expected_and_pending_until_they_ack_the_current_version() {
        let table = AckTable::default();
        let paths = [SecretPath::parse("shop/db").unwrap()];
        let (a, b, c) = (
            pod("i", "a", None),
            pod("i", "b", None),
            pod("i", "c", None),
        );
        let _ga = table.watching(&a, &paths);
        let _gb = table.watching(&b, &paths);
        let _gc = table.watching(&c, &paths);
        table.record(&a, &[ack("shop/db", 2, v1::ApplyState::Applied)]);
        table.record(&b, &[ack("shop/db", 2, v1::ApplyState::Failed)]);
        table.record(&c, &[ack("shop/db", 1, v1::ApplyState::Applied)]);
        let created = SystemTime::now() - Duration::from_secs(1);
        let r = table.status("shop/db", 2, Some(created));
        assert_eq!((r.expected, r.applied, r.failed, r.pending), (3, 1, 1, 1));
        assert!(r.workloads[0].time_to_apply.is_some());
        assert_eq!(
            r.workloads[1].reason, "no space[31mleft",
            "control characters are dropped"
        );
        assert_eq!(r.workloads[2].state, v1::ApplyState::Pending as i32);
    }
}
