//! `cofferctl leases` and `revoke`: the live leases of dynamic secrets
//! (database credentials, certificates) and revoking one.

use std::process::ExitCode;

use crate::{
    args::BrokerArgs,
    connect::connect,
    output::{Printer, say, timestamp},
};

/// Lists the live leases under `path` (all when `None`).
pub(crate) async fn list(
    out: Printer,
    path: Option<String>,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let list = connect(&broker).await?.leases(path.as_deref()).await?;
    if out.json() {
        let leases: Vec<serde_json::Value> = list.leases.iter().map(lease_json).collect();
        out.value(&serde_json::json!({"leases": leases, "truncated": list.truncated}));
    } else {
        print_leases(out, &list);
    }
    if list.truncated {
        eprintln!("more leases matched than one answer holds: narrow --path");
    }
    Ok(ExitCode::SUCCESS)
}

/// Revokes the lease `lease_id` now.
pub(crate) async fn revoke(
    out: Printer,
    lease_id: String,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let revoked = connect(&broker).await?.revoke_lease(&lease_id).await?;
    if out.json() {
        out.value(&serde_json::json!({"revoked": lease_json(&revoked)}));
    } else {
        say!(
            out,
            "revoked {} ({} v{}, {})",
            revoked.lease_id,
            revoked.path,
            revoked.version,
            owner_text(&revoked)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `namespace/serviceaccount[/pod]` of a lease's owner.
fn owner_text(lease: &coffer::operator::Lease) -> String {
    let pod = if lease.pod.is_empty() {
        &lease.pod_uid
    } else {
        &lease.pod
    };
    if pod.is_empty() {
        format!("{}/{}", lease.namespace, lease.service_account)
    } else {
        format!("{}/{}/{pod}", lease.namespace, lease.service_account)
    }
}

fn lease_json(lease: &coffer::operator::Lease) -> serde_json::Value {
    let (failing_since, failure_kind) = match &lease.renewal {
        coffer::operator::RenewalState::Failing { since, kind } => (
            serde_json::Value::from(timestamp(*since)),
            serde_json::Value::from(kind.as_str()),
        ),
        _ => (serde_json::Value::Null, serde_json::Value::Null),
    };
    serde_json::json!({
        "leaseId": lease.lease_id,
        "path": lease.path,
        "owner": {
            "issuer": lease.issuer,
            "namespace": lease.namespace,
            "serviceAccount": lease.service_account,
            "pod": lease.pod,
            "podUid": lease.pod_uid,
        },
        "version": lease.version,
        "issuedAt": timestamp(lease.issued_at),
        "expiresAt": timestamp(lease.expires_at),
        "renewal": lease.renewal.as_str(),
        "failingSince": failing_since,
        "failureKind": failure_kind,
    })
}

fn print_leases(out: Printer, list: &coffer::operator::Leases) {
    if list.leases.is_empty() {
        say!(out, "no live leases");
        return;
    }
    say!(
        out,
        "{:<48} {:<20} {:<32} {:>4}  {:<20}  RENEWAL",
        "LEASE ID",
        "PATH",
        "OWNER",
        "VER",
        "EXPIRES"
    );
    for lease in &list.leases {
        let renewal = match &lease.renewal {
            coffer::operator::RenewalState::Failing { since, kind } => {
                format!("failing since {} ({kind})", timestamp(*since))
            }
            other => other.as_str().to_string(),
        };
        say!(
            out,
            "{:<48} {:<20} {:<32} {:>4}  {:<20}  {renewal}",
            lease.lease_id,
            lease.path,
            owner_text(lease),
            lease.version,
            timestamp(lease.expires_at)
        );
    }
}
