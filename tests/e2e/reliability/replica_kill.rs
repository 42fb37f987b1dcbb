//! Scenario 5: one of two broker replicas SIGKILLed under Get and watch
//! load. The replicas run on the 3-node raft cluster (through a proxy that
//! follows the active node, as a `vault-active` Service does) behind one
//! Service address (the fault proxy's round-robin, as kube-proxy spreads
//! connections). Watching: real `coffer-sidecar`s writing to tmpfs, and
//! the bulk as SDK watchers, half through the SDK's reconnecting stream,
//! half through one stream at a time with our own reconnect (every message
//! the broker sends counted). After the kill every watcher must reach the
//! survivor and end on the last version, none going backwards or seeing a
//! version twice; no sidecar's file may go missing or backwards; and
//! `cofferctl status` on the survivor shows its view (every sidecar on the
//! last version, 1 of 2 replicas answering). Printed: the time from the
//! kill to the first acknowledged write and to every watcher holding a
//! version written after the kill (the reconnect time).
//!
//! CI: 400 watchers. Full (`COFFER_CHAOS_FULL=1`): 2,000 watchers and a
//! longer run after the kill.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use coffer::{Client, TokenSource};
use coffer_tests::{
    BrokerProcess, Ctl, Key, SidecarOptions, SidecarProcess, eventually,
    fault::{FaultProxy, Target},
    load::{self, BrokerPair, Fleet, GetLoad, Ledger, Mode, SHARED, WatchLoad, Writer, watchers},
    mint,
    openbao_cluster::RaftCluster,
    serial,
};

const SIDECARS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn replica_kill_every_watcher_moves_to_the_survivor_and_no_file_goes_backwards() {
    let _turn = serial::heavy();
    let full = load::full_form();
    let (deployments, after_kill) = if full {
        (50, Duration::from_secs(30))
    } else {
        (10, Duration::from_secs(5))
    };
    let cluster = RaftCluster::start();
    let vault = FaultProxy::follow_active(&cluster);
    let pair = BrokerPair::start(&Fleet::policy(), &cluster.vault_args(&vault.address(), ""));
    let service = FaultProxy::start(Target::RoundRobin(vec![socket(&pair.a), socket(&pair.b)]));
    let endpoint = service.address();
    let fleet = Fleet::deployments(deployments, 40, Duration::from_secs(3600));
    let ledger = Ledger::new();
    let mut paths = fleet.secrets();
    paths.push(SHARED.to_string());
    load::seed(&endpoint, &paths, &ledger).await;

    let sidecars: Vec<SidecarProcess> = fleet.pods[..SIDECARS]
        .iter()
        .map(|pod| {
            SidecarProcess::start_with(
                &endpoint,
                &pod.token,
                "  - {path: shop/shared#value, file: value}\n",
                SidecarOptions::default(),
            )
        })
        .collect();
    for sidecar in &sidecars {
        eventually(Duration::from_secs(30), "a sidecar's first file", || {
            std::fs::read_to_string(sidecar.file("value")).ok()
        });
    }
    let files = FileWatch::start(&sidecars);
    let (sdk_pods, raw_pods) = fleet.pods.split_at(fleet.pods.len() / 2);
    let both = |pod: &load::Pod| vec![pod.secret.clone(), SHARED.to_string()];
    // Made one after the other, so that the Service sends every other one
    // to each replica.
    let connections = (fleet.pods.len() / 100).max(4);
    let sdk = WatchLoad::over(
        &watchers::connect(&endpoint, connections).await,
        sdk_pods,
        both,
        Mode::Sdk,
    );
    let raw = WatchLoad::over(
        &watchers::connect(&endpoint, connections).await,
        raw_pods,
        both,
        Mode::Raw,
    );
    for watches in [&sdk, &raw] {
        assert!(
            watches
                .wait_snapshots(Duration::from_secs(120))
                .await
                .is_some(),
            "snapshots: {} of {}, failures {:?}",
            watches.with_snapshot(),
            watches.receivers(),
            watches.failures()
        );
    }
    let writer = Writer::start(
        &endpoint,
        SHARED,
        Duration::from_millis(200),
        ledger.clone(),
    )
    .await;
    let gets = GetLoad::start(
        std::slice::from_ref(&endpoint),
        &fleet.pods,
        4,
        50,
        ledger.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The victim: the replica more sidecars are watching through.
    let sidecar_pods: Vec<&str> = fleet.pods[..SIDECARS]
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let on_a = local_watchers(&pair.a, &sidecar_pods).await;
    let on_b = local_watchers(&pair.b, &sidecar_pods).await;
    let mut pair = pair;
    let (victim, survivor) = if on_a >= on_b {
        (&mut pair.a, &pair.b)
    } else {
        (&mut pair.b, &pair.a)
    };
    let before_kill = ledger.count(SHARED);
    let killed = Instant::now();
    victim.process.kill();
    let write_back = loop {
        if ledger.count(SHARED) > before_kill {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no write succeeded after the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = ledger.last(SHARED).unwrap();
    let mut reconnected = Duration::ZERO;
    for watches in [&sdk, &raw] {
        watches
            .wait_version(SHARED, after, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{:?} of the watchers have a version written after the kill; failures {:?}",
                    watches.at_version(SHARED, after),
                    watches.failures()
                )
            });
        reconnected = reconnected.max(killed.elapsed());
    }
    tokio::time::sleep(after_kill).await;
    let written = writer.stop().await;
    let read = gets.stop().await;
    let last = ledger.last(SHARED).unwrap();
    let last_value = admin_read(&endpoint).await;
    for sidecar in &sidecars {
        eventually(
            Duration::from_secs(60),
            "every sidecar on the last value",
            || (std::fs::read_to_string(sidecar.file("value")).ok()? == last_value).then_some(()),
        );
    }
    let file_figures = files.stop();
    let mut verdicts = Vec::new();
    let mut reconnects = Vec::new();
    for watches in [sdk, raw] {
        watches
            .wait_version(SHARED, last, Duration::from_secs(60))
            .await;
        reconnects.push(watches.reconnects());
        verdicts.push(ledger.verify(&watches.close().await));
    }
    let (_, json, _) = Ctl::new(survivor).run(&["status", "shop/shared", "--output", "json"], b"");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let shown_on_last = status["workloads"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|w| sidecar_pods.contains(&w["pod"].as_str().unwrap_or_default()))
                .filter(|w| w["version"].as_u64() == Some(last))
                .count()
        })
        .unwrap_or_default();

    load::report(
        "replica_kill",
        &[
            ("watchers", fleet.pods.len().to_string()),
            ("sidecars", SIDECARS.to_string()),
            ("sidecars_on_victim", on_a.max(on_b).to_string()),
            ("writes_back_ms", write_back.as_millis().to_string()),
            ("reconnect_ms", reconnected.as_millis().to_string()),
            ("sdk_reconnects", reconnects[0].to_string()),
            ("raw_reconnects", reconnects[1].to_string()),
            ("writes", written.acked.to_string()),
            ("write_failures", format!("{:?}", written.failed)),
            ("write_gap_ms", written.longest_gap.as_millis().to_string()),
            ("gets", read.ok.to_string()),
            ("get_failures", format!("{:?}", read.failed)),
            ("get_stale", read.stale.to_string()),
            ("sdk", format!("[{}]", verdicts[0])),
            ("raw", format!("[{}]", verdicts[1])),
            ("file_reads", file_figures.reads.to_string()),
            ("file_missing", file_figures.missing.to_string()),
            ("file_backwards", file_figures.backwards.to_string()),
            (
                "status_answered",
                format!("{}/{}", status["replicasAnswered"], status["replicas"]),
            ),
            ("status_sidecars_on_last", shown_on_last.to_string()),
        ],
    );

    for verdict in &verdicts {
        assert_eq!(
            (
                verdict.without_snapshot,
                verdict.duplicates,
                verdict.backwards,
                verdict.behind
            ),
            (0, 0, 0, 0),
            "{verdict}"
        );
    }
    assert!(reconnects[1] > 0, "the kill ended raw streams");
    assert_eq!(
        (file_figures.missing, file_figures.backwards),
        (0, 0),
        "{file_figures:?}"
    );
    assert!(file_figures.reads > 0);
    assert_eq!(status["replicas"], 2, "{json}");
    assert_eq!(status["replicasAnswered"], 1, "{json}");
    assert_eq!(
        shown_on_last, SIDECARS,
        "the survivor shows every sidecar on the last version: {json}"
    );
}

/// The loopback address a broker listens on.
fn socket(broker: &BrokerProcess) -> SocketAddr {
    broker
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// How many of `pods` watch `shop/shared` on `broker` itself.
async fn local_watchers(broker: &BrokerProcess, pods: &[&str]) -> usize {
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = coffer::replica::status_local(&admin, SHARED).await.unwrap();
    status
        .workloads
        .iter()
        .filter(|w| w.watching && pods.contains(&w.pod.as_str()))
        .count()
}

/// The value `shop/shared` holds now, read as the operator.
async fn admin_read(endpoint: &str) -> String {
    let admin = Client::builder(endpoint)
        .token(TokenSource::from_static(mint(Key::Rsa, "ops", "admin")))
        .connect_lazy()
        .await
        .unwrap();
    let secret = admin.get("shop/shared#value").await.unwrap();
    secret.expose_str().unwrap().to_string()
}

/// Reads every sidecar's file every 5 ms from a thread: a read that fails
/// once the file existed is a file gone missing, a value `n=<sequence>`
/// lower than the last one read is a file gone backwards.
struct FileWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<FileFigures>,
}

#[derive(Debug, Default)]
struct FileFigures {
    reads: u64,
    missing: u64,
    backwards: u64,
}

impl FileWatch {
    fn start(sidecars: &[SidecarProcess]) -> Self {
        let files: Vec<_> = sidecars.iter().map(|s| s.file("value")).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut figures = FileFigures::default();
            let last: Vec<AtomicU64> = files.iter().map(|_| AtomicU64::new(0)).collect();
            while !stopped.load(Ordering::Relaxed) {
                for (file, last) in files.iter().zip(&last) {
                    figures.reads += 1;
                    let Ok(text) = std::fs::read_to_string(file) else {
                        figures.missing += 1;
                        continue;
                    };
                    let n: u64 = text.trim_start_matches("n=").parse().unwrap_or(0);
                    if n < last.fetch_max(n, Ordering::Relaxed) {
                        figures.backwards += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            figures
        });
        Self { stop, thread }
    }

    fn stop(self) -> FileFigures {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}
