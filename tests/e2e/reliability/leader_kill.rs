//! Scenario 1: the active OpenBao node SIGKILLed during a stream of writes
//! through the broker, with many watchers (CI: 200 pods on 4 connections;
//! full: 1,000 on 20). The broker reaches Vault both ways docs/vault.md
//! recommends, one after the other on one cluster: through a proxy that
//! follows the active node (as a `vault-active` Service does), then with
//! `addresses:` of every node.
//!
//! What must hold: writes during the election fail with UNAVAILABLE (no
//! hang), and succeed again once a leader is elected, without touching the
//! broker; every acknowledged write reaches every watcher exactly once and
//! in order, with its value; no watcher receives a version Vault does not
//! finally hold; Vault finally holds every acknowledged write.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::openbao_cluster::RaftCluster;

use super::{
    scenario::{Network, Route, admin, broker, counter, held, sized, write},
    watchers::Watchers,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_mid_rotation_loses_no_acknowledged_write() {
    let _turn = coffer_tests::serial::heavy();
    let mut cluster = RaftCluster::start();
    for route in Route::BOTH {
        let killed = leader_kill(&mut cluster, route).await;
        // The node back on its data, for the next route.
        tokio::task::block_in_place(|| cluster.restart(killed));
    }
}

/// One run through `route`; the node it killed.
async fn leader_kill(cluster: &mut RaftCluster, route: Route) -> usize {
    let (pods, connections, before, after) = sized((200, 4, 8, 8), (1_000, 20, 20, 20));
    let path = format!("shop/{}", route.name());
    let path = path.as_str();
    let network = Network::new(cluster, route);
    cluster.write(path, &[("password", "w-0")]);
    let broker = broker(cluster, &network, "");
    let watchers = Watchers::open(&broker.endpoint, path, pods, connections).await;
    let admin = admin(&broker).await;

    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut seq = 0;
    let mut next_value = || {
        seq += 1;
        format!("w-{seq}")
    };
    // Each write is delivered before the next, so a version the broker
    // never pushes shows as a gap, not as coalescing under load.
    for _ in 0..before {
        let value = next_value();
        let version = write(&admin, path, &value)
            .await
            .result
            .unwrap_or_else(|e| panic!("a write before the fault failed: {e:?}"));
        acked.push((version, value));
        watchers.reach(version, Duration::from_secs(10)).await;
    }

    let old_leader = cluster.leader();
    let killed = Instant::now();
    cluster.kill(old_leader);
    let mut failed: Vec<(Option<Code>, Duration)> = Vec::new();
    let mut election = None;
    let mut recovered = None;
    let mut successes = 0;
    while successes < after {
        if election.is_none() && cluster.try_leader().is_some() {
            election = Some(killed.elapsed());
        }
        let value = next_value();
        let attempt = write(&admin, path, &value).await;
        match attempt.result {
            Ok(version) => {
                recovered.get_or_insert(killed.elapsed());
                acked.push((version, value));
                successes += 1;
                watchers.reach(version, Duration::from_secs(10)).await;
            }
            Err(code) => {
                failed.push((code, attempt.took));
                assert!(
                    killed.elapsed() < Duration::from_secs(120),
                    "writes never succeeded again: {failed:?}\n{}",
                    broker.process.output()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let last = acked.last().unwrap().0;
    let delivered = watchers.reach(last, Duration::from_secs(30)).await;

    // The broker's reads, counted before the test reads each version.
    let reads = cluster.reads(path);
    // Updates tried again rather than streams ended (see
    // broker/src/service/watch/state.rs).
    let retried = counter(&broker, "coffer_watch_update_retries_total");
    // What Vault finally holds.
    let metadata = cluster.metadata(path);
    let current = metadata["current_version"].as_u64().unwrap();
    let vault = |v: u64| held(cluster, path, v);
    let missed = watchers.check(&acked, &vault);
    let slowest_failure = failed.iter().map(|f| f.1).max().unwrap_or_default();
    println!(
        "reliability: leader_kill: route={} watchers={pods} connections={connections} writes_acked={} \
         writes_failed={} election_s={:.2} writes_recovered_s={:.2} slowest_failed_write_s={:.2} \
         versions_missed={missed} vault_versions_unacknowledged={} \
         vault_data_reads={reads} vault_reads_per_version={:.2} delivered_to_all={} watch_update_retries={retried}",
        route.name(),
        acked.len(),
        failed.len(),
        election.unwrap_or_default().as_secs_f64(),
        recovered.unwrap_or_default().as_secs_f64(),
        slowest_failure.as_secs_f64(),
        current - 1 - acked.len() as u64,
        // The snapshot's version and every acknowledged one.
        reads as f64 / (acked.len() + 1) as f64,
        delivered.is_some(),
    );

    let codes: Vec<_> = failed.iter().map(|f| f.0).collect();
    assert!(
        codes.iter().all(|c| *c == Some(Code::Unavailable)),
        "writes during the election fail with UNAVAILABLE: {codes:?}"
    );
    assert!(
        acked.windows(2).all(|w| w[0].0 < w[1].0),
        "acknowledged versions only grow: {acked:?}"
    );
    for (version, value) in &acked {
        assert_eq!(
            vault(*version).as_deref(),
            Some(value.as_str()),
            "Vault lost acknowledged version {version}"
        );
    }
    // A write answered UNAVAILABLE may still have been committed (its
    // answer was lost with the leader): Vault may hold more, never less.
    assert!(
        current >= last,
        "Vault's current version {current} < {last}"
    );
    assert_eq!(
        missed, 0,
        "acknowledged versions some watcher never received"
    );
    assert!(delivered.is_some(), "every watcher has the last version");
    old_leader
}
