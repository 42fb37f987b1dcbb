//! Scenario 8, the soak: W watchers, each a distinct pod identity, over
//! W/100 connections, watching their deployment's secret and the shared
//! one, beside a steady Get load and one rotation of the shared secret per
//! second. Every watcher must end on the last version, nothing repeated or
//! older than what it had (a stream that cannot keep up is sent the newest
//! version: the versions it skipped are printed as `missed`); no read may fail or be older
//! than an acknowledged write; the broker logs no WARN or ERROR. Its RSS
//! and open descriptors are sampled and their slope after warm-up printed
//! (never asserted: figures, not thresholds).
//!
//! CI: 2,000 watchers for 60 s. Full (`COFFER_CHAOS_FULL=1`, `scripts/chaos`):
//! 10,000 watchers over 100 connections for 10 minutes.

use std::time::{Duration, Instant};

use coffer_tests::{
    BrokerProcess,
    load::{self, Fleet, GetLoad, Ledger, Mode, SHARED, Sampler, WatchLoad, Writer},
    openbao::OpenBao,
    serial, vault_args,
};

struct Form {
    deployments: usize,
    pods_per_deployment: usize,
    connections: usize,
    run: Duration,
    gets_per_second: u32,
    sample_every: Duration,
}

fn form() -> Form {
    if load::full_form() {
        Form {
            deployments: 100,
            pods_per_deployment: 100,
            connections: 100,
            run: Duration::from_secs(600),
            gets_per_second: 100,
            sample_every: Duration::from_secs(5),
        }
    } else {
        Form {
            deployments: 20,
            pods_per_deployment: 100,
            connections: 20,
            run: Duration::from_secs(60),
            gets_per_second: 50,
            sample_every: Duration::from_secs(1),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_every_watcher_ends_on_the_last_version_and_the_broker_logs_no_warning() {
    let _turn = serial::heavy();
    let form = form();
    let bao = OpenBao::start();
    let fleet = Fleet::deployments(form.deployments, form.pods_per_deployment, form.run * 3);
    let broker = BrokerProcess::builder()
        .policy(&Fleet::policy())
        .args(vault_args(&bao, ""))
        .args(["--log-level", "info"])
        .start();
    let endpoints = [broker.endpoint.clone()];
    let ledger = Ledger::new();
    let mut paths = fleet.secrets();
    paths.push(SHARED.to_string());
    load::seed(&broker.endpoint, &paths, &ledger).await;

    let sampler = Sampler::start(broker.process.pid(), form.sample_every);
    let started = Instant::now();
    let watches = WatchLoad::open(
        &endpoints,
        &fleet.pods,
        |pod| vec![pod.secret.clone(), SHARED.to_string()],
        form.connections,
        Mode::Raw,
    )
    .await;
    let opened = watches.wait_snapshots(Duration::from_secs(300)).await;
    assert!(
        opened.is_some(),
        "{} of {} receivers got a snapshot; failures {:?}",
        watches.with_snapshot(),
        watches.receivers(),
        watches.failures()
    );
    let warm_up = started.elapsed() + Duration::from_secs(10);

    let writer = Writer::start(
        &broker.endpoint,
        SHARED,
        Duration::from_secs(1),
        ledger.clone(),
    )
    .await;
    let gets = GetLoad::start(
        &endpoints,
        &fleet.pods,
        4,
        form.gets_per_second,
        ledger.clone(),
    )
    .await;
    tokio::time::sleep(form.run).await;
    let written = writer.stop().await;
    let read = gets.stop().await;
    let last = ledger.last(SHARED).unwrap();
    let settled = watches
        .wait_version(SHARED, last, Duration::from_secs(60))
        .await;
    let failures = watches.failures();
    let reconnects = watches.reconnects();
    // Sampled while every stream is still open.
    let samples = sampler.stop().await;
    let logs = watches.close().await;
    let verdict = ledger.verify(&logs);

    let rss_slope = load::slope_per_minute(&samples, warm_up, |s| s.rss_kib as f64);
    let fd_slope = load::slope_per_minute(&samples, warm_up, |s| s.fds as f64);
    let after_warm_up: Vec<_> = samples.iter().filter(|s| s.at >= warm_up).collect();
    let first = after_warm_up.first().map_or(0, |s| s.rss_kib);
    let end = after_warm_up.last().map_or(0, |s| s.rss_kib);
    let noisy = load::warnings_and_errors(&broker.process.output());
    let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
    load::report(
        "soak",
        &[
            ("watchers", fleet.pods.len().to_string()),
            ("connections", form.connections.to_string()),
            ("seconds", form.run.as_secs().to_string()),
            (
                "open_s",
                format!("{:.2}", opened.unwrap_or_default().as_secs_f64()),
            ),
            ("rotations", written.acked.to_string()),
            (
                "write_failures",
                written.failed.values().sum::<u64>().to_string(),
            ),
            ("gets", read.ok.to_string()),
            ("get_failures", read.failures().to_string()),
            ("get_stale", read.stale.to_string()),
            ("get_shed", read.shed.to_string()),
            (
                "get_p50_ms",
                format!("{:.2}", read.quantile(0.5).as_secs_f64() * 1e3),
            ),
            (
                "get_p99_ms",
                format!("{:.2}", read.quantile(0.99).as_secs_f64() * 1e3),
            ),
            (
                "settle_ms",
                settled.map_or("timeout".into(), |d| d.as_millis().to_string()),
            ),
            ("reconnects", reconnects.to_string()),
            ("watch_failures", format!("{failures:?}")),
            ("verdict", format!("[{verdict}]")),
            ("rss_kib_after_warmup", first.to_string()),
            ("rss_kib_end", end.to_string()),
            ("rss_slope_kib_per_min", fmt(rss_slope)),
            (
                "fds_end",
                after_warm_up.last().map_or(0, |s| s.fds).to_string(),
            ),
            ("fd_slope_per_min", fmt(fd_slope)),
            ("samples", after_warm_up.len().to_string()),
            ("log_warn_error", noisy.len().to_string()),
        ],
    );
    for (message, count) in load::by_message(&noisy).iter().take(5) {
        println!("reliability: soak: broker logged {count}x: {message}");
    }

    // A stream that cannot keep up is sent the newest version, not each
    // one (latest-value semantics): `missed` counts the versions superseded
    // that way, printed, not asserted; nothing may repeat or go backwards,
    // and everyone ends on the last version.
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
    assert_eq!(verdict.receivers, 2 * fleet.pods.len());
    assert!(written.acked >= form.run.as_secs() / 2, "{written:?}");
    assert!(failures.is_empty(), "watch failures {failures:?}");
    assert_eq!(read.failures(), 0, "{:?}", read.failed);
    assert_eq!(read.stale, 0, "a read older than an acknowledged write");
    assert!(read.ok > 0);
    assert!(
        noisy.is_empty(),
        "the broker logged {} WARN/ERROR lines: {:?}",
        noisy.len(),
        load::by_message(&noisy)
    );
}
