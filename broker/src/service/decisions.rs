//! Policy decisions: each one taken, logged, counted per RPC and summarized
//! every minute; a denial is audited where it is taken.

use std::sync::Arc;

use super::{Broker, Call};
use crate::{
    audit::Outcome,
    auth::WorkloadIdentity,
    error::ApiError,
    path::SecretPath,
    policy::{Capability, Decision},
};

/// An allow decision whose audit record is still to be written, once the
/// version served is known.
#[must_use]
#[derive(Clone)]
pub(super) struct Allowed {
    pub(super) capability: Capability,
    /// Shared: a watch reuses its grant for every update it sends.
    pub(super) rule: Arc<str>,
}

impl Broker {
    /// Decides; a denial is audited here, an allowance by the caller once it
    /// knows what it served ([`Broker::audit_served`]).
    pub(super) async fn authorize(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
    ) -> Result<Allowed, ApiError> {
        let decision = self.inner.policy.borrow().decide(who, path, capability);
        log_decision(
            &self.inner.decisions,
            who,
            path,
            capability,
            call.rpc,
            &decision,
        );
        match decision {
            Decision::Allow { rule } => Ok(Allowed { capability, rule }),
            denied => {
                let path = path.to_string();
                let mut event = call.event(
                    Some(who),
                    Some(&path),
                    Some(capability),
                    Outcome::Deny,
                    denied.reason(),
                );
                event.rule = denied.rule();
                self.audit(&event).await?;
                Err(ApiError::PermissionDenied)
            }
        }
    }
}

/// Logs one decision: every one at `debug`, denials at `info`; allowances
/// are counted and summarized at `info` (see [`DecisionCounts`]).
fn log_decision(
    counts: &DecisionCounts,
    who: &WorkloadIdentity,
    path: &SecretPath,
    capability: Capability,
    rpc: &'static str,
    decision: &Decision,
) {
    let allowed = decision.is_allowed();
    counts.count(rpc, allowed);
    let level_enabled = if allowed {
        tracing::enabled!(target: "coffer::decision", tracing::Level::DEBUG)
    } else {
        tracing::enabled!(target: "coffer::decision", tracing::Level::INFO)
    };
    if !level_enabled {
        return;
    }
    let rule = decision.rule().unwrap_or("");
    if allowed {
        tracing::debug!(
            target: "coffer::decision",
            rpc,
            namespace = %who.namespace,
            service_account = %who.service_account,
            pod = who.pod_name.as_deref().unwrap_or(""),
            path = %path,
            capability = capability.as_str(),
            allowed,
            rule,
            "policy decision"
        );
    } else {
        tracing::info!(
            target: "coffer::decision",
            rpc,
            namespace = %who.namespace,
            service_account = %who.service_account,
            pod = who.pod_name.as_deref().unwrap_or(""),
            path = %path,
            capability = capability.as_str(),
            allowed,
            rule,
            "policy decision"
        );
    }
}

/// How often the allowed/denied counts are logged at `info`.
pub const DECISION_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The RPCs whose decisions are counted; any other name counts as `other`.
const COUNTED_RPCS: [&str; 15] = [
    "GetSecret",
    "GetSecrets",
    "WatchSecrets",
    "AckSecrets",
    "PutSecret",
    "RotateSecret",
    "RollbackSecret",
    "ListVersions",
    "RotationStatus",
    "DeleteVersions",
    "UndeleteVersions",
    "DestroyVersions",
    "ListSecrets",
    "NotifyChanged",
    "other",
];

/// Allowed and denied decisions per RPC since the last summary: lock-free
/// counters on the hot path, one `info` line per RPC with decisions when a
/// summary is due. The summary is written by the first decision after
/// [`DECISION_SUMMARY_EVERY`] has passed (an idle broker has nothing to say).
pub(crate) struct DecisionCounts {
    allowed: [std::sync::atomic::AtomicU64; COUNTED_RPCS.len()],
    denied: [std::sync::atomic::AtomicU64; COUNTED_RPCS.len()],
    since: std::time::Instant,
    /// Milliseconds after `since` when the next summary is due.
    next_due_ms: std::sync::atomic::AtomicU64,
    every: std::time::Duration,
}

impl Default for DecisionCounts {
    fn default() -> Self {
        Self::every(DECISION_SUMMARY_EVERY)
    }
}

impl DecisionCounts {
    fn every(every: std::time::Duration) -> Self {
        Self {
            allowed: Default::default(),
            denied: Default::default(),
            since: std::time::Instant::now(),
            next_due_ms: std::sync::atomic::AtomicU64::new(duration_ms(every)),
            every,
        }
    }

    pub(super) fn count(&self, rpc: &'static str, allowed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let index = COUNTED_RPCS
            .iter()
            .position(|name| *name == rpc)
            .unwrap_or(COUNTED_RPCS.len() - 1);
        let counter = if allowed {
            &self.allowed[index]
        } else {
            &self.denied[index]
        };
        counter.fetch_add(1, Relaxed);
        let now = duration_ms(self.since.elapsed());
        let due = self.next_due_ms.load(Relaxed);
        // One caller wins the summary; the others carry on counting.
        if now >= due
            && self
                .next_due_ms
                .compare_exchange(due, now + duration_ms(self.every), Relaxed, Relaxed)
                .is_ok()
        {
            self.summarize();
        }
    }

    /// Logs and resets the counts: one line per RPC that had decisions.
    fn summarize(&self) -> Vec<(&'static str, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut lines = Vec::new();
        for (index, rpc) in COUNTED_RPCS.iter().enumerate() {
            let allowed = self.allowed[index].swap(0, Relaxed);
            let denied = self.denied[index].swap(0, Relaxed);
            if allowed + denied > 0 {
                tracing::info!(
                    target: "coffer::decision",
                    rpc,
                    allowed,
                    denied,
                    period_s = self.every.as_secs(),
                    "policy decisions summary"
                );
                lines.push((*rpc, allowed, denied));
            }
        }
        lines
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_summary_counts_per_rpc_and_resets() {
        let counts = DecisionCounts::every(std::time::Duration::from_secs(3600));
        for _ in 0..3 {
            counts.count("GetSecret", true);
        }
        counts.count("GetSecret", false);
        counts.count("PutSecret", false);
        counts.count("NoSuchRpc", true);
        let lines = counts.summarize();
        assert_eq!(
            lines,
            vec![("GetSecret", 3, 1), ("PutSecret", 0, 1), ("other", 1, 0)]
        );
        assert!(counts.summarize().is_empty(), "the counts reset");
    }

    #[test]
    fn decision_summary_is_due_once_per_period() {
        let counts = DecisionCounts::every(std::time::Duration::ZERO);
        counts.count("GetSecret", true);
        // The summary ran inside count(): nothing is left to report.
        assert!(counts.summarize().is_empty());
    }
}
