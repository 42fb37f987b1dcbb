//! Scenario 7, the cluster restart storm: N distinct pods start at once,
//! each opening its sidecar's watch of its deployment's secret (one
//! connection per pod, as one sidecar per pod has) through two broker
//! replicas that have just started (empty caches), the pods spread over
//! both as a Service spreads them. Printed: the time until every pod has
//! its snapshot; Vault data reads counted by the audit device, beside the
//! goal (one per secret per replica) and what one Vault Agent per pod
//! costs (N); refusals, which must be none.
//!
//! CI: 400 pods reading 40 secrets. Full (`COFFER_CHAOS_FULL=1`): 2,000 pods
//! reading 200 secrets, 10 pods per secret.

use std::time::Duration;

use coffer_tests::{
    BrokerProcess,
    load::{self, BrokerPair, Fleet, Ledger, Mode, WatchLoad},
    openbao::OpenBao,
    serial, vault_args,
};

#[tokio::test(flavor = "multi_thread")]
async fn restart_storm_every_pod_gets_its_snapshot_without_refusal() {
    let _turn = serial::heavy();
    let (secrets, per_secret) = if load::full_form() {
        (200, 10)
    } else {
        (40, 10)
    };
    let bao = OpenBao::start();
    let fleet = Fleet::deployments(secrets, per_secret, Duration::from_secs(3600));
    let args = vault_args(&bao, "");
    // The secrets exist before the restart: written through a broker that
    // is then gone, so the replicas start with nothing cached.
    {
        let seeder = BrokerProcess::builder()
            .policy(&Fleet::policy())
            .args(&args)
            .start();
        load::seed(&seeder.endpoint, &fleet.secrets(), &Ledger::new()).await;
    }
    let pair = BrokerPair::start(&Fleet::policy(), &args);
    let data = "secret/data/shop/app-";
    let metadata = "secret/metadata/shop/app-";
    let reads_before = load::audited(&bao.audit_log, "read", data);
    let polls_before = load::audited(&bao.audit_log, "read", metadata);

    let pods = fleet.pods.len();
    let watches = WatchLoad::open(
        &pair.endpoints(),
        &fleet.pods,
        |pod| vec![pod.secret.clone()],
        pods,
        Mode::Raw,
    )
    .await;
    let ready = watches.wait_snapshots(Duration::from_secs(300)).await;
    let with_snapshot = watches.with_snapshot();
    let failures = watches.failures();
    let reconnects = watches.reconnects();
    // Let the audit device write its last lines.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = load::audited(&bao.audit_log, "read", data) - reads_before;
    let polls = load::audited(&bao.audit_log, "read", metadata) - polls_before;
    let logs = watches.close().await;
    let refusals: u64 = failures.values().sum();
    load::report(
        "restart_storm",
        &[
            ("pods", pods.to_string()),
            ("secrets", secrets.to_string()),
            ("replicas", "2".into()),
            (
                "all_snapshots_s",
                ready.map_or("timeout".into(), |d| format!("{:.2}", d.as_secs_f64())),
            ),
            ("with_snapshot", with_snapshot.to_string()),
            ("vault_data_reads", reads.to_string()),
            ("goal_reads", (2 * secrets).to_string()),
            ("vault_agent_per_pod_reads", pods.to_string()),
            ("vault_metadata_reads", polls.to_string()),
            ("refusals", refusals.to_string()),
            ("failures", format!("{failures:?}")),
            ("reconnects", reconnects.to_string()),
        ],
    );

    assert!(
        ready.is_some(),
        "{with_snapshot} of {pods} pods got a snapshot; failures {failures:?}"
    );
    assert_eq!(refusals, 0, "refused: {failures:?}");
    assert!(
        logs.iter()
            .all(|l| l.first().is_some() && l.duplicates == 0 && l.backwards == 0)
    );
    assert!(
        reads >= secrets,
        "every secret was read from Vault: {reads}"
    );
}
