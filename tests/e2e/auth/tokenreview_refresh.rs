//! TokenReview's answer runs out before the token (`ttlSeconds`): that is a
//! refresh, not an attack (issue #21). A watch opened with the answer ends
//! then without an error, is counted in
//! `coffer_watch_reauthentications_total` and not in
//! `coffer_auth_failures_total`, and the client reconnects and is reviewed
//! again: the sidecar's files and the SDK's watch carry on, without a
//! warning. The API server is the strict stand-in of `coffer_tests::https`,
//! vouching for any token shaped like a projected one.

use std::time::Duration;

use base64::Engine;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, SidecarProcess, eventually, https::HttpsServer, mint,
    strip_ansi,
};
use serde_json::{Value, json};

/// The API server's TokenReview: authenticated as the token's own `sub`
/// and pod, for our audience. (The broker never reads a token's claims in
/// this mode: what it learns, it learns from this answer.)
fn review(body: &str) -> (u16, String) {
    let request: Value = serde_json::from_str(body).unwrap_or_default();
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    let claims: Value = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or_default();
    let status = match claims["sub"].as_str() {
        Some(sub) => json!({
            "authenticated": true,
            "user": {
                "username": sub,
                "uid": "sa-uid",
                "extra": {
                    "authentication.kubernetes.io/pod-name":
                        [claims["kubernetes.io"]["pod"]["name"].as_str().unwrap_or("web-0")],
                },
            },
            "audiences": [AUDIENCE],
        }),
        None => json!({"authenticated": false}),
    };
    (
        201,
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": status,
        })
        .to_string(),
    )
}

/// A stand-in API server and a broker reviewing at it with `ttlSeconds:
/// 2`, serving metrics.
fn broker_with_short_reviews() -> (HttpsServer, BrokerProcess, tempfile::TempDir) {
    let server = HttpsServer::kube_api_server(std::sync::Arc::new(|seen| review(&seen.body)));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    tokenReview:\n      server: {}\n      caFile: {}\n      ttlSeconds: 2\n",
            server.url,
            server.ca_file.display(),
        ),
    )
    .unwrap();
    let broker = BrokerProcess::builder()
        .auth_args([
            "--auth-config".as_ref(),
            config.as_os_str(),
            "--metrics-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ])
        .start();
    (server, broker, dir)
}

/// The value of the unlabelled counter `name` on the metrics page.
fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// How many reviews named `token`.
fn reviews_of(server: &HttpsServer, token: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.body.contains(token))
        .count()
}

#[tokio::test]
async fn a_watch_whose_review_runs_out_ends_cleanly_and_is_not_a_failure() {
    let (server, broker, _dir) = broker_with_short_reviews();
    broker.put_bytes("shop/db", b"v1").await;
    let web = mint(Key::Rsa, "shop", "web");
    let client = broker.client(web.clone()).await;
    let mut stream = client.watch_connection(["shop/db"]).await.unwrap();
    stream.next().await.unwrap().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the stream ends when the review's answer runs out");
    assert!(end.is_none(), "a clean end, not {end:?}");

    // Reconnecting reviews the token again, and it is still good.
    let mut again = client.watch_connection(["shop/db"]).await.unwrap();
    again.next().await.unwrap().unwrap();
    assert!(
        reviews_of(&server, &web) >= 2,
        "the token was reviewed again"
    );

    let page = broker.metrics();
    assert!(
        counter(&page, "coffer_watch_reauthentications_total") >= 1,
        "{page}"
    );
    assert!(
        !page.contains("coffer_auth_failures_total{reason=\"expired\"}"),
        "{page}"
    );
    assert_eq!(broker.auth_failure_reasons(), Vec::<String>::new());
    assert!(
        !broker.process.output().contains(&web),
        "the token is logged"
    );
}

#[tokio::test]
async fn the_sdk_watch_carries_on_across_the_reviews_end() {
    let (_server, broker, _dir) = broker_with_short_reviews();
    broker.put_bytes("shop/db", b"v1").await;
    let client = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let mut watch = client.watch(["shop/db"]).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().secrets[0].version(), 1);
    // Two of the answer's ends go by; the watch reconnects by itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.put_bytes("shop/db", b"v2").await;
    let update = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the update arrives")
        .expect("the watch goes on")
        .expect("without an error");
    assert_eq!(update.secrets[0].version(), 2);
    assert_eq!(broker.auth_failure_reasons(), Vec::<String>::new());
}

#[tokio::test]
async fn a_sidecar_keeps_its_files_current_across_reviews_without_a_warning() {
    let (server, broker, _dir) = broker_with_short_reviews();
    broker.put_bytes("shop/db", b"first").await;
    let web = mint(Key::Rsa, "shop", "web");
    let sidecar = SidecarProcess::start(&broker, &web, "  - path: shop/db\n    file: db\n", &[]);
    sidecar.wait_for_files(&["db"], Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.put_bytes("shop/db", b"second").await;
    eventually(
        Duration::from_secs(20),
        "the rotation after the reviews' ends",
        || (std::fs::read(sidecar.file("db")).ok()? == b"second").then_some(()),
    );
    assert!(
        reviews_of(&server, &web) >= 2,
        "the token was reviewed again"
    );
    assert_eq!(broker.auth_failure_reasons(), Vec::<String>::new());
    let output = strip_ansi(&sidecar.process.output());
    let complaints: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
    assert!(
        output.contains("watch stream ended; reconnecting"),
        "{output}"
    );
}
