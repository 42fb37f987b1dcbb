//! How a rollout's status is shown: the summary and one line per workload
//! for people, one JSON object for scripts and the console's poll.

use crate::output::{Printer, say, timestamp};

/// `status`: the summary line, then one line per workload.
pub(crate) fn print_status(out: Printer, path: &str, status: &coffer::operator::RotationStatus) {
    say!(
        out,
        "{path}: version {}: {}/{} applied ({} failed, {} pending)",
        status.current_version,
        status.applied,
        status.expected,
        status.failed,
        status.pending
    );
    if status.replicas > 1 {
        say!(
            out,
            "  ({} of {} replicas answered)",
            status.replicas_answered,
            status.replicas
        );
    }
    let refused = &status.watches_refused;
    if refused.total() > 0 {
        say!(
            out,
            "  {} watches of this path refused since start ({} per pod, {} per account, {} process-wide); {} of every path",
            refused.total(),
            refused.per_pod,
            refused.per_account,
            refused.process,
            status.watches_refused_all_paths.total()
        );
    }
    for w in &status.workloads {
        let mut line = format!(
            "  {}/{} pod={} version={} {}",
            w.namespace,
            w.service_account,
            if w.pod.is_empty() { "-" } else { &w.pod },
            w.version,
            w.state.as_str(),
        );
        if let Some(t) = w.time_to_apply {
            line.push_str(&format!(" in {}ms", t.as_millis()));
        }
        if !w.reason.is_empty() {
            line.push_str(&format!(" ({})", w.reason));
        }
        if w.acknowledged_at.is_some() {
            line.push_str(&format!(" at {}", timestamp(w.acknowledged_at)));
        }
        if !w.watching {
            line.push_str(" [not watching]");
        }
        say!(out, "{line}");
    }
}

/// `status --output json`, and the console's rollout.
pub(crate) fn status_json(
    path: &str,
    status: &coffer::operator::RotationStatus,
) -> serde_json::Value {
    let workloads: Vec<serde_json::Value> = status
        .workloads
        .iter()
        .map(|w| {
            serde_json::json!({
                "issuer": w.issuer,
                "namespace": w.namespace,
                "serviceAccount": w.service_account,
                "pod": w.pod,
                "podUid": w.pod_uid,
                "version": w.version,
                "state": w.state.as_str(),
                "reason": w.reason,
                "watching": w.watching,
                "acknowledgedAt": w.acknowledged_at.map(|_| timestamp(w.acknowledged_at)),
                "timeToApplyMs": w.time_to_apply.map(|t| t.as_millis() as u64),
            })
        })
        .collect();
    serde_json::json!({
        "path": path,
        "currentVersion": status.current_version,
        "expected": status.expected,
        "applied": status.applied,
        "failed": status.failed,
        "pending": status.pending,
        "replicas": status.replicas,
        "replicasAnswered": status.replicas_answered,
        "watchesRefused": refusals_json(&status.watches_refused),
        "watchesRefusedAllPaths": refusals_json(&status.watches_refused_all_paths),
        "workloads": workloads,
    })
}

/// Watch refusals by bound, as `status --output json` prints them.
fn refusals_json(refused: &coffer::operator::WatchRefusals) -> serde_json::Value {
    serde_json::json!({
        "perPod": refused.per_pod,
        "perAccount": refused.per_account,
        "process": refused.process,
    })
}
