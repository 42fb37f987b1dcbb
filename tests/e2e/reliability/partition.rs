//! Scenario 3: the broker cut off from all of Vault (CI: 12 s; full: 30 s),
//! then healed, once through the active-node Service and once with
//! `addresses:` of every node. The cut is a blackhole in the proxies
//! between the broker and every node: the broker's
//! connections to Vault stay open and nothing crosses, as behind a network
//! partition without RST (`tc netem` does not work on this machine, and a
//! network namespace would need TLS on every OpenBao node: the proxy makes
//! the same silence). Meanwhile a new version is written straight into
//! the cluster.
//!
//! What must hold: no open watch closes; Gets are answered with the last
//! good value; health stays SERVING (the outage is shorter than
//! `cache.maxStaleness`); after the heal, the version written meanwhile
//! reaches every watcher (printed against the poll interval) and Gets.
//!
//! The broker runs with `requestTimeout: 2s, maxRetries: 1` so a Get gives
//! up on Vault and answers from the cache within the CI outage (the
//! defaults, 5 s and 3 retries, take about 20 s to give up).

use std::time::{Duration, Instant};

use coffer_tests::{Key, mint, openbao_cluster::RaftCluster};
use tonic_health::pb::health_check_response::ServingStatus;

use super::{
    scenario::{Network, Route, broker, held, sized},
    watchers::Watchers,
};

const POLL: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_from_all_of_vault_keeps_watches_and_serves_the_last_good_value() {
    let _turn = coffer_tests::serial::heavy();
    let cluster = RaftCluster::start();
    for route in Route::BOTH {
        partition(&cluster, route).await;
    }
}

async fn partition(cluster: &RaftCluster, route: Route) {
    let (pods, connections, outage) = sized(
        (50, 2, Duration::from_secs(12)),
        (1_000, 20, Duration::from_secs(30)),
    );
    let path = format!("shop/{}", route.name());
    let path = path.as_str();
    let network = Network::new(cluster, route);
    let v1 = cluster.write(path, &[("password", "p-1")]);
    let broker = broker(
        cluster,
        &network,
        "cache: {ttl: 2s, maxStaleness: 5m}\npoll: {interval: 2s, jitter: 0}\n\
         limits: {requestTimeout: 2s, maxRetries: 1}\n",
    );
    let watchers = Watchers::open(&broker.endpoint, path, pods, connections).await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let value = |s: &coffer::Secret| {
        String::from_utf8_lossy(s.expose_key("password").unwrap()).into_owned()
    };
    assert_eq!(value(&web.get(path).await.unwrap()), "p-1");

    network.blackhole();
    let cut = Instant::now();
    // Written while the broker cannot see it.
    let v2 = tokio::task::block_in_place(|| cluster.write(path, &[("password", "p-2")]));
    // Past the cache TTL: a Get asks Vault, waits, and falls back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    let stale = web
        .get(path)
        .await
        .expect("the last good value, not an error");
    let stale_get = asked.elapsed();
    assert_eq!((stale.version(), value(&stale)), (v1, "p-1".to_string()));
    let mut health = Vec::new();
    while cut.elapsed() < outage {
        health.push(broker.health().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        health.iter().all(|h| *h == ServingStatus::Serving),
        "health stays SERVING within maxStaleness: {health:?}"
    );
    assert!(
        watchers.ended().is_empty(),
        "no watch closes: {:?}",
        watchers.ended()
    );

    network.heal();
    let arrived = watchers
        .reach(v2, Duration::from_secs(60))
        .await
        .expect("the version written during the partition reaches every watcher");
    let fresh = web.get(path).await.unwrap();
    assert_eq!((fresh.version(), value(&fresh)), (v2, "p-2".to_string()));
    let vault = |v: u64| tokio::task::block_in_place(|| held(cluster, path, v));
    let missed = watchers.check(&[(v2, "p-2".to_string())], &vault);
    println!(
        "reliability: partition: route={} watchers={pods} outage_s={} stale_get_s={:.2} health_checks={} \
         health_not_serving=0 watches_closed=0 arrival_after_heal_s={:.2} poll_interval_s={} \
         versions_missed={missed}",
        route.name(),
        outage.as_secs(),
        stale_get.as_secs_f64(),
        health.len(),
        arrived.as_secs_f64(),
        POLL.as_secs(),
    );
    assert_eq!(missed, 0);
}
