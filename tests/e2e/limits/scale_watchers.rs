//! One Deployment, many pods: every pod of a 1,000-replica service shares
//! its service account, and every one of them must be able to watch and
//! receive a rotation. The bound on open watches holds per pod, not per
//! service account.
//!
//! The pods' streams share a few connections (as many HTTP/2 streams per
//! connection as `--max-requests-per-connection` allows), so the test stays
//! far below the file-descriptor limit.

use std::time::{Duration, Instant};

use coffer::{Client, TokenSource, WatchEventKind};
use coffer_broker::auth::jwt::ProjectedClaims;
use coffer_tests::{BrokerProcess, ISSUER, Key, mint_claims, web_token};
use futures::StreamExt;

/// Pods of the one service account.
const PODS: usize = 1_000;

/// Connections the pods' streams share (50 streams each).
const CONNECTIONS: usize = 20;

/// A token of pod `web-N` of `shop/web`, bound to the pod (its own uid).
fn pod_token(n: usize) -> String {
    web_token(
        Key::Ec,
        Some(&format!("web-{n}")),
        Duration::from_secs(3600),
    )
}

/// A value of the broker's `/metrics` page, e.g. `coffer_watch_streams_open`.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_pods_of_one_service_account_all_watch_and_all_receive_a_rotation() {
    let _turn = coffer_tests::serial::heavy();
    let broker = BrokerProcess::builder()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let tokens: Vec<String> = (0..PODS).map(pod_token).collect();

    let mut connections = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        connections.push(
            Client::builder(broker.endpoint.clone())
                .token(TokenSource::from_static("unused"))
                .connect()
                .await
                .unwrap(),
        );
    }
    let rss_before = metric(&broker.metrics(), "process_resident_memory_bytes").unwrap();

    // Every pod opens its watch; at most 64 openings in flight at once.
    let opened = Instant::now();
    let opens = tokens.iter().enumerate().map(|(n, token)| {
        let pod = connections[n % CONNECTIONS].with_token(TokenSource::from_static(token.clone()));
        async move {
            let mut stream = pod.watch_connection(["shop/db"]).await?;
            let snapshot = stream.next().await.expect("a snapshot")?;
            assert_eq!(snapshot.secrets[0].version(), 1);
            Ok::<_, coffer::Error>(stream)
        }
    });
    let results: Vec<_> = futures::stream::iter(opens)
        .buffer_unordered(64)
        .collect()
        .await;
    let refused: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| format!("{:?}", e.code()))
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {PODS} pods could not watch, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let streams: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    eprintln!(
        "{PODS} watches of one service account opened in {:?}",
        opened.elapsed()
    );

    let page = broker.metrics();
    assert_eq!(
        metric(&page, "coffer_watch_streams_open"),
        Some(PODS as f64)
    );
    let rss_after = metric(&page, "process_resident_memory_bytes").unwrap();
    eprintln!(
        "broker resident memory: {:.1} MiB before, {:.1} MiB with {PODS} streams on {CONNECTIONS} connections: about {:.0} bytes per stream",
        rss_before / 1048576.0,
        rss_after / 1048576.0,
        (rss_after - rss_before) / PODS as f64
    );

    // One rotation: every pod receives it.
    let rotated = Instant::now();
    let version = broker.put_bytes("shop/db", b"v2").await;
    let arrivals = streams.into_iter().map(|mut stream| async move {
        let update = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the rotation arrives within 20 s")
            .expect("the stream is open")
            .expect("an update, not an error");
        assert_eq!(update.kind, WatchEventKind::Update);
        assert_eq!(update.secrets[0].version(), version);
        (rotated.elapsed(), stream)
    });
    let arrived = futures::future::join_all(arrivals).await;
    let last = arrived.iter().map(|(at, _)| *at).max().unwrap();
    eprintln!("the rotation reached all {PODS} pods in {last:?}");
    assert_eq!(arrived.len(), PODS);

    let page = broker.metrics();
    for reason in ["per_pod", "per_account", "process"] {
        assert_eq!(
            metric(
                &page,
                &format!("coffer_watch_refused_total{{reason=\"{reason}\"}}")
            ),
            Some(0.0),
            "{reason}"
        );
    }
}

/// Pods whose memory cost is measured, each on its own connection.
const MEASURED: usize = 5_000;

/// The measurement behind `BYTES_PER_WATCH` (broker/src/service/limits.rs):
/// the broker's resident memory with 5,000 watchers each on its own
/// connection, as sidecars connect, over plaintext and over TLS. Run by
/// hand (it needs 5,000 file descriptors on each side):
/// `cargo test -p coffer-tests --test e2e limits::scale_watchers -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, run by hand"]
async fn measure_the_memory_of_a_watch_on_its_own_connection() {
    let _turn = coffer_tests::serial::heavy();
    for tls in [false, true] {
        measure(tls).await;
    }
}

async fn measure(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--metrics-listen".to_string(),
        "127.0.0.1:0".into(),
        "--log-level".into(),
        "info".into(),
        "--max-watches".into(),
        "100000".into(),
    ];
    let mut ca = None;
    if tls {
        let issued = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        args.extend([
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]);
        ca = Some(issued.cert.pem().into_bytes());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let broker = BrokerProcess::builder().args(&args).start();
    let endpoint = if tls {
        broker.endpoint.replace("http://", "https://")
    } else {
        broker.endpoint.clone()
    };
    let connect = |token: String| {
        let (endpoint, ca) = (endpoint.clone(), ca.clone());
        async move {
            let mut builder = Client::builder(endpoint).token(TokenSource::from_static(token));
            if let Some(ca) = ca {
                builder = builder.ca_pem(ca);
            }
            builder.connect().await.unwrap()
        }
    };
    connect(mint_claims(
        Key::Ec,
        &ProjectedClaims::projected(
            ISSUER,
            "coffer",
            "ops",
            "admin",
            None,
            Duration::from_secs(600),
        ),
    ))
    .await
    .put(coffer::operator::Put::new(
        "shop/db",
        coffer::SecretData::Bytes(b"v1".as_slice().into()),
    ))
    .await
    .unwrap();
    let tokens: Vec<String> = (0..MEASURED).map(pod_token).collect();
    // Warm up: the first streams allocate what every later one reuses.
    let warm = connect(pod_token(MEASURED)).await;
    let mut warm_stream = warm.watch_connection(["shop/db"]).await.unwrap();
    warm_stream.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = metric(&broker.metrics(), "process_resident_memory_bytes").unwrap();
    let opens = tokens.iter().map(|token| {
        let client = connect(token.clone());
        async move {
            let client = client.await;
            let mut stream = client.watch_connection(["shop/db"]).await.unwrap();
            stream.next().await.unwrap().unwrap();
            (client, stream)
        }
    });
    let open: Vec<_> = futures::stream::iter(opens)
        .buffer_unordered(64)
        .collect()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = broker.metrics();
    let after = metric(&page, "process_resident_memory_bytes").unwrap();
    assert_eq!(
        metric(&page, "coffer_watch_streams_open"),
        Some((MEASURED + 1) as f64)
    );
    eprintln!(
        "{MEASURED} watchers, each on its own {} connection: {:.1} MiB before, {:.1} MiB after: {:.0} bytes per watcher",
        if tls { "TLS" } else { "plaintext" },
        before / 1048576.0,
        after / 1048576.0,
        (after - before) / MEASURED as f64
    );
    drop(open);
}
