//! The bounds on open watch streams, through the real broker: one pod
//! (its token's pod uid) is bounded, its sibling pods of the same service
//! account are not held back by it; tokens bound to no pod share one bound
//! per service account; and the whole process has a bound of its own. Every
//! refusal is `RESOURCE_EXHAUSTED`, counted in
//! `coffer_watch_refused_total{reason}` and shown by `cofferctl status`.

use std::time::Duration;

use coffer::Code;
use coffer_tests::{BrokerProcess, Ctl, Key, web_token};

/// A token of `shop/web`, bound to pod `pod` (its own uid) or to no pod.
fn token(pod: Option<&str>) -> String {
    web_token(Key::Rsa, pod, Duration::from_secs(3600))
}

/// Opens a watch of `shop/db` with `token` and reads its snapshot; the
/// stream, or the code it was refused with.
async fn watch(broker: &BrokerProcess, token: String) -> Result<coffer::WatchConnection, Code> {
    let client = broker.client(token).await;
    let mut stream = client
        .watch_connection(["shop/db"])
        .await
        .map_err(|e| e.code().unwrap())?;
    match stream.next().await {
        Some(Ok(_)) => Ok(stream),
        Some(Err(e)) => Err(e.code().unwrap()),
        None => panic!("the stream ended without a snapshot"),
    }
}

fn refused(page: &str, reason: &str) -> f64 {
    let series = format!("coffer_watch_refused_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_pod_cannot_open_more_than_its_bound_and_its_siblings_still_can() {
    let broker = BrokerProcess::builder()
        .args([
            "--max-watches-per-pod",
            "3",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&broker, token(Some("web-0"))).await.unwrap());
    }
    assert_eq!(
        watch(&broker, token(Some("web-0"))).await.err(),
        Some(Code::ResourceExhausted),
        "the pod's fourth watch"
    );
    // The same service account's other pods are not held back.
    for pod in ["web-1", "web-2", "web-3"] {
        open.push(watch(&broker, token(Some(pod))).await.unwrap());
    }
    let page = broker.metrics();
    assert_eq!(refused(&page, "per_pod"), 1.0);
    assert_eq!(refused(&page, "per_account"), 0.0);
    assert_eq!(refused(&page, "process"), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_bound_to_no_pod_share_one_bound_per_service_account() {
    let broker = BrokerProcess::builder()
        .args([
            "--max-watches-per-account",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(watch(&broker, token(None)).await.unwrap());
    }
    assert_eq!(
        watch(&broker, token(None)).await.err(),
        Some(Code::ResourceExhausted)
    );
    // A pod-bound token of the same account counts against its pod.
    open.push(watch(&broker, token(Some("web-0"))).await.unwrap());
    assert_eq!(refused(&broker.metrics(), "per_account"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_wide_bound_refuses_counts_and_shows_in_status() {
    let broker = BrokerProcess::builder()
        .args(["--max-watches", "3", "--metrics-listen", "127.0.0.1:0"])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let mut open = Vec::new();
    for pod in ["web-0", "web-1", "web-2"] {
        open.push(watch(&broker, token(Some(pod))).await.unwrap());
    }
    for pod in ["web-3", "web-4"] {
        assert_eq!(
            watch(&broker, token(Some(pod))).await.err(),
            Some(Code::ResourceExhausted),
            "{pod}"
        );
    }
    let page = broker.metrics();
    assert_eq!(refused(&page, "process"), 2.0);
    assert!(
        page.lines()
            .any(|l| l == "coffer_watch_streams_max 3" || l == "coffer_watch_streams_max 3.0"),
        "the bound in force is exposed:\n{page}"
    );

    let ctl = Ctl::new(&broker);
    let json: serde_json::Value =
        serde_json::from_str(&ctl.run(&["status", "shop/db", "--output", "json"], b"").1).unwrap();
    assert_eq!(
        json["watchesRefused"],
        serde_json::json!({"perPod": 0, "perAccount": 0, "process": 2}),
        "{json}"
    );
    let (_, text, _) = ctl.run(&["status", "shop/db"], b"");
    assert!(
        text.contains("2 watches of this path refused") && text.contains("2 process-wide"),
        "{text}"
    );

    // A closed stream gives its place back.
    drop(open.pop());
    coffer_tests::eventually(Duration::from_secs(10), "a free place", || {
        let page = broker.metrics();
        page.lines()
            .any(|l| l == "coffer_watch_streams_open 2")
            .then_some(())
    });
    open.push(watch(&broker, token(Some("web-3"))).await.unwrap());
}
