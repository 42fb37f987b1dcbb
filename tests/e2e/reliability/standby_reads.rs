//! OpenBao 2.7 standbys answer reads from their own raft copy, which may
//! lag the active node. A broker pointed at a standby (one address), or at
//! the chart's all-pods Service (a round-robin proxy over every node), must
//! still never go back: after each write through the broker, a reader gets
//! at least the acknowledged version; every watcher receives every
//! acknowledged version; no watch stream ends (with NOT_FOUND "version not
//! found" or anything else). Vault reads per version are counted by the
//! nodes' audit logs and printed beside the same run's figure through a
//! proxy that follows the active node (the `vault-active` Service).
//!
//! On the broker before issue #27 this failed: readers got the previous
//! version for a whole `cache.ttl`, watch streams ended with NOT_FOUND, and
//! 1.6–1.8 Vault reads were made per version.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use coffer::{SecretData, operator::Put};
use coffer_tests::{
    BrokerProcess, Key, eventually, fault::FaultProxy, mint, openbao_cluster::RaftCluster,
};
use parking_lot::Mutex;

/// Writes per target in the CI form; `COFFER_CHAOS_FULL=1`: 100.
fn writes() -> u64 {
    if std::env::var_os("COFFER_CHAOS_FULL").is_some() {
        100
    } else {
        20
    }
}

const WATCHERS: usize = 3;

/// What one target's run saw.
#[derive(Debug, Default)]
struct Seen {
    /// Reads that answered an older version than the one acknowledged.
    behind: Vec<(u64, u64)>,
    /// (watcher, version) acknowledged but not received.
    missed: Vec<(usize, u64)>,
    /// How watch streams ended (none should).
    ended: Vec<String>,
    /// Vault data reads of the path per version written.
    reads_per_version: f64,
}

/// Each watcher's received versions, and how its stream ended.
type Received = Arc<Mutex<Vec<(Vec<u64>, Option<String>)>>>;

async fn run(cluster: &RaftCluster, address: &str, path: &str) -> Seen {
    // Default cache TTL (30 s): a stale "latest" would be served that long.
    let config = cluster.file(
        &format!("{}.yaml", path.replace('/', "-")),
        &cluster.config_yaml(address, "poll: {interval: 500ms}\n"),
    );
    let broker = BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start();
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let reader = broker.client(mint(Key::Rsa, "shop", "web")).await;
    // The path exists on every node before the watches open, so they open
    // whatever the broker does with a lagging first read.
    let first = cluster.write(path, &[("password", "value-0")]);
    for node in 0..cluster.len() {
        eventually(
            Duration::from_secs(10),
            "every node to have the path",
            || {
                cluster
                    .read_at(node, path, None)
                    .filter(|(v, _)| *v == first)
            },
        );
    }
    // The test's own reads above are not the broker's.
    let own_reads = cluster.reads(path);

    let received: Received = Arc::new(Mutex::new(vec![(Vec::new(), None); WATCHERS]));
    for w in 0..WATCHERS {
        let client = broker.client(mint(Key::Ec, "shop", "web")).await;
        let mut stream = match client.watch_connection([path]).await {
            Ok(stream) => stream,
            Err(error) => {
                received.lock()[w].1 = Some(format!("opening: {error}"));
                continue;
            }
        };
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let _client = client;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        let mut r = received.lock();
                        r[w].0.extend(event.secrets.iter().map(|s| s.version()));
                    }
                    Err(error) => {
                        received.lock()[w].1 = Some(error.to_string());
                        return;
                    }
                }
            }
            received.lock()[w].1 = Some("the stream ended".into());
        });
    }

    let mut seen = Seen::default();
    let mut acknowledged = vec![first];
    for i in 1..=writes() {
        let version = admin
            .put(Put::new(path, map(&i.to_string())))
            .await
            .expect("a write through the broker");
        acknowledged.push(version);
        let got = reader.get(path).await.expect("a read after the write");
        if got.version() < version {
            seen.behind.push((version, got.version()));
        }
        // Paced: every watcher has this version before the next write, so
        // none may skip one by coalescing.
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let all = received
                .lock()
                .iter()
                .all(|(v, end)| v.contains(&version) || end.is_some());
            if all || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Give the last update a moment to reach everyone, then look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (w, (versions, end)) in received.lock().iter().enumerate() {
        for v in &acknowledged {
            if !versions.contains(v) {
                seen.missed.push((w, *v));
            }
        }
        if let Some(end) = end {
            seen.ended.push(end.clone());
        }
    }
    let reads = cluster.reads(path) - own_reads;
    seen.reads_per_version = reads as f64 / acknowledged.len() as f64;
    assert!(
        !broker.process.output().contains("value-"),
        "no secret value in the broker's log"
    );
    seen
}

fn map(value: &str) -> SecretData {
    SecretData::Map(
        [(
            "password".to_string(),
            coffer::SecretBytes::from(format!("value-{value}").as_bytes()),
        )]
        .into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_and_watchers_never_go_back_behind_a_lagging_standby() {
    let _turn = coffer_tests::serial::heavy();
    let cluster = RaftCluster::start();
    let standby = cluster.standbys()[0];
    let all_pods = FaultProxy::round_robin(&cluster);
    let active = FaultProxy::follow_active(&cluster);

    let reference = run(&cluster, &active.address(), "shop/active").await;
    let one_standby = run(&cluster, &cluster.address(standby), "shop/standby").await;
    let round_robin = run(&cluster, &all_pods.address(), "shop/all-pods").await;
    println!(
        "reliability: standby_reads: writes={} reads_per_version_standby={:.2} \
         reads_per_version_all_pods={:.2} reads_per_version_follow_active={:.2}",
        writes(),
        one_standby.reads_per_version,
        round_robin.reads_per_version,
        reference.reads_per_version,
    );
    let mut problems = Vec::new();
    for (name, seen) in [
        ("follow-active", &reference),
        ("one standby", &one_standby),
        ("all pods", &round_robin),
    ] {
        println!(
            "reliability: standby_reads: {name}: behind={} missed={} ended={}",
            seen.behind.len(),
            seen.missed.len(),
            seen.ended.len()
        );
        if !seen.behind.is_empty() {
            problems.push(format!(
                "{name}: reads older than acknowledged (acknowledged, read): {:?}",
                seen.behind
            ));
        }
        if !seen.ended.is_empty() {
            problems.push(format!("{name}: watch streams ended: {:?}", seen.ended));
        }
        if !seen.missed.is_empty() {
            problems.push(format!(
                "{name}: acknowledged versions never pushed (watcher, version): {:?}",
                seen.missed
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
