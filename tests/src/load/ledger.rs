//! What every receiver saw, checked against what was acknowledged: the
//! writers enter each version the broker acknowledged, each receiver keeps
//! the versions it was sent as runs (`[first, last]` of consecutive
//! versions, so a receiver that missed nothing holds one run whatever the
//! length of the test), and [`Ledger::verify`] says, per receiver and in
//! all, whether every acknowledged write reached it exactly once, in order,
//! nothing older than what it had already seen, ending on the last version.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;

/// Runs a receiver keeps before it only counts: a receiver with this many
/// holes is broken anyway, and memory stays bounded.
const MAX_RUNS: usize = 64;

/// The versions the broker acknowledged, per path.
#[derive(Default)]
pub struct Ledger {
    acked: Mutex<HashMap<String, BTreeSet<u64>>>,
}

/// What one receiver (a pod's watch of one path) was sent, in order.
#[derive(Debug, Clone, Default)]
pub struct ReceiverLog {
    /// The pod's index in its fleet.
    pub pod: usize,
    /// The watched path.
    pub path: String,
    /// Consecutive versions seen, as `(first, last)`, increasing.
    runs: Vec<(u64, u64)>,
    /// Versions beyond [`MAX_RUNS`] runs (counted, not kept).
    overflow: u64,
    /// Updates carrying the version already held.
    pub duplicates: u64,
    /// Messages carrying a version older than one already held.
    pub backwards: u64,
    /// Snapshots after a reconnect (a re-sent current version is fine there).
    pub resnapshots: u64,
    /// Messages received in all.
    pub messages: u64,
}

/// The verdict over every receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub receivers: usize,
    pub messages: u64,
    /// Receivers that never got a first version.
    pub without_snapshot: usize,
    pub duplicates: u64,
    pub backwards: u64,
    /// Acknowledged versions after a receiver's first that it never got,
    /// short of the last acknowledged one (superseded while it was away).
    pub missed: u64,
    /// Receivers not ending on the path's last acknowledged version.
    pub behind: usize,
    /// Reconnect snapshots in all.
    pub resnapshots: u64,
}

impl Ledger {
    /// A shared empty ledger.
    pub fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }

    /// The broker acknowledged `version` of `path`.
    pub fn acked(&self, path: &str, version: u64) {
        self.acked
            .lock()
            .entry(path.to_string())
            .or_default()
            .insert(version);
    }

    /// The newest acknowledged version of `path`.
    pub fn last(&self, path: &str) -> Option<u64> {
        self.acked.lock().get(path)?.last().copied()
    }

    /// How many versions of `path` were acknowledged.
    pub fn count(&self, path: &str) -> usize {
        self.acked.lock().get(path).map_or(0, BTreeSet::len)
    }

    /// Checks every receiver against the acknowledged versions.
    pub fn verify(&self, logs: &[ReceiverLog]) -> Verdict {
        let acked = self.acked.lock();
        let empty = BTreeSet::new();
        let mut verdict = Verdict {
            receivers: logs.len(),
            ..Verdict::default()
        };
        for log in logs {
            verdict.messages += log.messages;
            verdict.duplicates += log.duplicates;
            verdict.backwards += log.backwards;
            verdict.resnapshots += log.resnapshots;
            let acked = acked.get(&log.path).unwrap_or(&empty);
            let (Some(first), Some(last)) = (log.first(), log.last()) else {
                verdict.without_snapshot += 1;
                continue;
            };
            if acked
                .last()
                .is_some_and(|final_version| last != *final_version)
            {
                verdict.behind += 1;
            }
            if last > first {
                verdict.missed += acked
                    .range(first + 1..=last)
                    .filter(|v| !log.contains(**v))
                    .count() as u64;
            }
        }
        verdict
    }
}

impl ReceiverLog {
    /// An empty log of `pod`'s watch of `path`.
    pub fn new(pod: usize, path: &str) -> Self {
        Self {
            pod,
            path: path.to_string(),
            ..Self::default()
        }
    }

    /// The receiver was sent `version`, in a snapshot (`snapshot`: the
    /// first message of a stream) or an update.
    pub fn saw(&mut self, version: u64, snapshot: bool) {
        self.messages += 1;
        let Some(last) = self.last() else {
            self.runs.push((version, version));
            return;
        };
        if snapshot && self.messages > 1 {
            self.resnapshots += 1;
        }
        if version < last {
            self.backwards += 1;
        } else if version == last {
            // A stream's snapshot after a reconnect re-sends the current
            // version; an update must bring a new one.
            if !snapshot {
                self.duplicates += 1;
            }
        } else if version == last + 1 {
            if let Some(run) = self.runs.last_mut() {
                run.1 = version;
            }
        } else if self.runs.len() < MAX_RUNS {
            self.runs.push((version, version));
        } else {
            self.overflow += 1;
            if let Some(run) = self.runs.last_mut() {
                // Kept as the newest version; the hole is uncounted.
                run.1 = version;
            }
        }
    }

    /// The first version seen.
    pub fn first(&self) -> Option<u64> {
        self.runs.first().map(|r| r.0)
    }

    /// The newest version seen.
    pub fn last(&self) -> Option<u64> {
        self.runs.last().map(|r| r.1)
    }

    fn contains(&self, version: u64) -> bool {
        self.runs
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&version))
    }
}

impl Verdict {
    /// Nothing lost, repeated or reordered, and every receiver on the last
    /// version: what a fault-free run must show.
    pub fn is_exact(&self) -> bool {
        self.without_snapshot == 0
            && self.duplicates == 0
            && self.backwards == 0
            && self.missed == 0
            && self.behind == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "receivers={} messages={} no_snapshot={} duplicates={} backwards={} missed={} behind={} resnapshots={}",
            self.receivers,
            self.messages,
            self.without_snapshot,
            self.duplicates,
            self.backwards,
            self.missed,
            self.behind,
            self.resnapshots
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(events: &[(u64, bool)]) -> ReceiverLog {
        let mut log = ReceiverLog::new(0, "shop/x");
        for (version, snapshot) in events {
            log.saw(*version, *snapshot);
        }
        log
    }

    fn ledger(versions: impl IntoIterator<Item = u64>) -> Ledger {
        let ledger = Ledger::default();
        for v in versions {
            ledger.acked("shop/x", v);
        }
        ledger
    }

    #[test]
    fn a_receiver_that_saw_every_version_once_is_exact() {
        let seen = log(&[(3, true), (4, false), (5, false), (5, true), (6, false)]);
        let verdict = ledger(1..=6).verify(&[seen, log(&[(6, true)])]);
        assert!(verdict.is_exact(), "{verdict}");
        assert_eq!(verdict.resnapshots, 1);
    }

    #[test]
    fn a_repeated_an_older_a_skipped_and_a_missing_last_version_are_each_counted() {
        let seen = log(&[(1, true), (2, false), (2, false), (1, true), (4, false)]);
        let verdict = ledger(1..=5).verify(&[seen, log(&[])]);
        assert_eq!(
            (
                verdict.duplicates,
                verdict.backwards,
                verdict.missed,
                verdict.behind,
                verdict.without_snapshot
            ),
            (1, 1, 1, 1, 1),
            "{verdict}"
        );
    }

    #[test]
    fn a_version_that_was_never_acknowledged_is_not_missed() {
        // Version 3's write failed (its answer lost): not acknowledged.
        let verdict = ledger([1, 2, 4]).verify(&[log(&[(1, true), (2, false), (4, false)])]);
        assert!(verdict.is_exact(), "{verdict}");
    }

    #[test]
    fn memory_stays_bounded_however_many_holes() {
        let events: Vec<(u64, bool)> = (0..1000).map(|i| (i * 2, false)).collect();
        let seen = log(&events);
        assert_eq!(seen.runs.len(), MAX_RUNS);
        assert_eq!(seen.last(), Some(1998));
    }
}
