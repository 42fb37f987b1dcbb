//! Scenario 4: quorum lost (2 of 3 OpenBao nodes SIGKILLed, the active one
//! among them) and regained (both restarted on their data and unsealed),
//! the broker never restarted; once through a proxy that follows the
//! active node (with none active, a connection is refused at once, as a
//! `vault-active` Service without endpoints refuses it), then with
//! `addresses:` of every node, on the same cluster.
//!
//! What must hold: writes meanwhile fail with UNAVAILABLE (their time is
//! printed); Gets are answered from the cache; no watch closes; once a
//! leader is elected again, writes succeed and every watcher gets them.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{Key, mint, openbao_cluster::RaftCluster};
use tonic_health::pb::health_check_response::ServingStatus;

use super::{
    scenario::{Network, Route, admin, broker, held, sized, write},
    watchers::Watchers,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_lost_and_regained_without_restarting_the_broker() {
    let _turn = coffer_tests::serial::heavy();
    let mut cluster = RaftCluster::start();
    for route in Route::BOTH {
        quorum(&mut cluster, route).await;
    }
}

async fn quorum(cluster: &mut RaftCluster, route: Route) {
    let (pods, connections, outage) = sized(
        (50, 2, Duration::from_secs(8)),
        (1_000, 20, Duration::from_secs(30)),
    );
    let path = format!("shop/{}", route.name());
    let path = path.as_str();
    let network = Network::new(cluster, route);
    let broker = broker(
        cluster,
        &network,
        "cache: {ttl: 2s, maxStaleness: 5m}\npoll: {interval: 2s}\n",
    );
    let admin = admin(&broker).await;
    let v1 = write(&admin, path, "q-1").await.result.unwrap();
    let watchers = Watchers::open(&broker.endpoint, path, pods, connections).await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let value = |s: &coffer::Secret| {
        String::from_utf8_lossy(s.expose_key("password").unwrap()).into_owned()
    };
    assert_eq!(value(&web.get(path).await.unwrap()), "q-1");

    let leader = cluster.leader();
    let other = (leader + 1) % cluster.len();
    cluster.kill(leader);
    cluster.kill(other);
    let lost = Instant::now();
    let mut failed = Vec::new();
    let mut stale_gets = Vec::new();
    let mut health = Vec::new();
    let mut n = 0;
    while lost.elapsed() < outage {
        n += 1;
        let attempt = write(&admin, path, &format!("lost-{n}")).await;
        match attempt.result {
            Ok(version) => panic!("a write succeeded without quorum: version {version}"),
            Err(code) => failed.push((code, attempt.took)),
        }
        let asked = Instant::now();
        let got = web
            .get(path)
            .await
            .expect("Gets are answered from the cache");
        stale_gets.push(asked.elapsed());
        assert_eq!((got.version(), value(&got)), (v1, "q-1".to_string()));
        health.push(broker.health().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        watchers.ended().is_empty(),
        "no watch closes: {:?}",
        watchers.ended()
    );

    let restarting = Instant::now();
    tokio::task::block_in_place(|| {
        cluster.restart(leader);
        cluster.restart(other);
    });
    let (_, _) = tokio::task::block_in_place(|| cluster.wait_for_leader(Duration::from_secs(60)));
    let elected = restarting.elapsed();
    let mut after = 0;
    let v2 = loop {
        let attempt = write(&admin, path, "q-2").await;
        match attempt.result {
            Ok(version) => break version,
            Err(code) => {
                after += 1;
                assert_eq!(code, Some(Code::Unavailable));
                assert!(
                    restarting.elapsed() < Duration::from_secs(120),
                    "writes never came back"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let recovered = restarting.elapsed();
    let arrived = watchers
        .reach(v2, Duration::from_secs(30))
        .await
        .expect("every watcher gets the first write after quorum returns");
    let vault = |v: u64| tokio::task::block_in_place(|| held(cluster, path, v));
    let missed = watchers.check(&[(v2, "q-2".to_string())], &vault);
    let slowest = failed.iter().map(|f| f.1).max().unwrap_or_default();
    let slowest_get = stale_gets.iter().max().copied().unwrap_or_default();
    let not_serving = health
        .iter()
        .filter(|h| **h != ServingStatus::Serving)
        .count();
    println!(
        "reliability: quorum: route={} watchers={pods} outage_s={} writes_failed={} slowest_failed_write_s={:.2} \
         stale_gets={} slowest_stale_get_s={:.2} health_not_serving={not_serving} \
         restart_to_leader_s={:.2} restart_to_write_s={:.2} writes_failed_after_leader={after} \
         delivery_s={:.2} watches_closed=0 versions_missed={missed}",
        route.name(),
        outage.as_secs(),
        failed.len(),
        slowest.as_secs_f64(),
        stale_gets.len(),
        slowest_get.as_secs_f64(),
        elected.as_secs_f64(),
        recovered.as_secs_f64(),
        arrived.as_secs_f64(),
    );
    let codes: Vec<_> = failed.iter().map(|f| f.0).collect();
    assert!(
        codes.iter().all(|c| *c == Some(Code::Unavailable)),
        "writes without quorum fail with UNAVAILABLE: {codes:?}"
    );
    assert_eq!(not_serving, 0, "SERVING within maxStaleness");
    assert_eq!(missed, 0);
}
