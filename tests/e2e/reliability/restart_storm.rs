//! Scenario 7, the cluster restart storm: N distinct pods start at once,
//! each opening its sidecar's watch of its secret (one connection per pod,
//! as one sidecar per pod has) through two broker replicas that have just
//! started (empty caches), the pods spread over both as a Service spreads
//! them, on the 3-node raft cluster (reached through a proxy that follows
//! the active node, as a `vault-active` Service does). Printed: the time
//! until every pod has its snapshot; Vault data reads counted by the audit
//! device, beside the goal (one per secret per replica) and what one Vault
//! Agent per pod costs (N); refusals, which must be none.
//!
//! Twice: one service account per deployment (each identity reads one
//! secret), and every pod of one service account (one identity reads every
//! secret: the per-identity share of Vault reads is what a storm meets).
//!
//! CI: 400 pods reading 40 secrets (200 reading 20 for one account). Full (`COFFER_CHAOS_FULL=1`): 2,000 pods
//! reading 200 secrets, 10 pods per secret.

use std::{collections::BTreeMap, time::Duration};

use coffer_tests::{
    BrokerProcess,
    fault::FaultProxy,
    load::{self, BrokerPair, Fleet, Ledger, Mode, WatchLoad},
    openbao_cluster::RaftCluster,
    serial,
};

const PER_SECRET: usize = 10;

fn secrets() -> usize {
    if load::full_form() { 200 } else { 40 }
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_storm_every_pod_gets_its_snapshot_without_refusal() {
    let _turn = serial::heavy();
    let secrets = secrets();
    let fleet = Fleet::deployments(secrets, PER_SECRET, Duration::from_secs(3600));
    let storm = storm("restart_storm", &fleet, secrets).await;
    assert_eq!(storm.refusals, 0, "refused: {:?}", storm.failures);
    assert!(
        storm.reads >= secrets,
        "every secret was read from Vault: {}",
        storm.reads
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_storm_of_one_service_account_gets_every_snapshot_without_refusal() {
    let _turn = serial::heavy();
    // CI: 200 pods reading 20 secrets; full: 2,000 reading 200, more
    // uncached paths per replica than the identity's default burst (100).
    let secrets = if load::full_form() { 200 } else { 20 };
    let fleet = Fleet::one_account(secrets, PER_SECRET, Duration::from_secs(3600));
    let storm = storm("restart_storm_one_account", &fleet, secrets).await;
    // Before the fix of issue #27 the store charged an identity's share
    // before a read could join the one in flight, so every pod of a secret
    // paid and the full form had 1,389 (debug) to 7,612 (release) refusals;
    // now only the pod that starts a read pays (0 refusals, full form).
    assert_eq!(storm.refusals, 0, "refused: {:?}", storm.failures);
}

struct Storm {
    reads: usize,
    refusals: u64,
    failures: BTreeMap<String, u64>,
}

/// Starts the cluster and two fresh replicas, then every pod of `fleet` at
/// once; waits for every snapshot, prints the figures as `scenario`.
async fn storm(scenario: &str, fleet: &Fleet, secrets: usize) -> Storm {
    let cluster = RaftCluster::start();
    let vault = FaultProxy::follow_active(&cluster);
    let args = cluster.vault_args(&vault.address(), "");
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
    let reads_before = load::audited(&cluster.outputs(), "read", data);
    let polls_before = load::audited(&cluster.outputs(), "read", metadata);

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
    let reads = load::audited(&cluster.outputs(), "read", data) - reads_before;
    let polls = load::audited(&cluster.outputs(), "read", metadata) - polls_before;
    let logs = watches.close().await;
    let refusals: u64 = failures.values().sum();
    load::report(
        scenario,
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
    assert!(
        logs.iter()
            .all(|l| l.first().is_some() && l.duplicates == 0 && l.backwards == 0)
    );
    Storm {
        reads,
        refusals,
        failures,
    }
}
