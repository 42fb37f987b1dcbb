//! TokenReview against the real API server, configured as the
//! `tokenreview` overlay configures it (rendered by `kubectl kustomize`;
//! addresses changed, and `ttlSeconds` shortened so the test is quick): a
//! real pod-bound token is accepted while its pod exists, and once the pod
//! is deleted it is refused and its watch closed within `ttlSeconds` plus
//! the API server's own 10 s cache of successful authentications.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{BrokerProcess, deploy, kube::ApiServer};

const IN_CLUSTER_SERVER: &str = "server: https://kubernetes.default.svc\n";
const POD_CREDENTIALS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const TTL_SECONDS: u64 = 4;
/// kube-apiserver caches a successful token authentication this long.
const API_SERVER_CACHE: Duration = Duration::from_secs(10);

const POLICY: &str = r#"
rules:
  - name: web-reads-its-folder
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/web/*"]
    capabilities: [read, watch]
  - name: operators
    subjects: [{namespace: coffer, serviceAccount: coffer-operator}]
    paths: ["**"]
    capabilities: [read, write]
"#;

/// The broker as the tokenreview overlay configures it, against `cluster`.
fn broker(cluster: &ApiServer) -> BrokerProcess {
    let objects = deploy::objects("overlays/tokenreview");
    let credentials = cluster.broker_pod_credentials();
    for binding in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        cluster.apply(&binding.to_string());
    }
    let shipped = deploy::find(&objects, "ConfigMap", "coffer-auth")["data"]["auth.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(shipped.contains("ttlSeconds: 60") && shipped.contains(IN_CLUSTER_SERVER));
    let auth = shipped
        .replace(IN_CLUSTER_SERVER, &format!("server: {}\n", cluster.url))
        .replace(POD_CREDENTIALS, credentials.to_str().unwrap())
        .replace("ttlSeconds: 60", &format!("ttlSeconds: {TTL_SECONDS}"));
    let file = cluster
        .dir()
        .join(format!("auth-{}.yaml", std::process::id() ^ rand_suffix()));
    std::fs::write(&file, auth).unwrap();
    BrokerProcess::builder()
        .policy(POLICY)
        .auth_args([
            "--auth-config".as_ref(),
            file.as_os_str(),
            "--metrics-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ])
        .start()
}

/// A number that differs between two calls in one process.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed) << 20
}

/// The value of the unlabelled counter `name` on a metrics page.
fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_live_pods_watch_carries_on_across_review_refreshes_without_a_failure() {
    let cluster = ApiServer::shared();
    let broker = broker(&cluster);
    cluster.shop_pod("web-2");
    let operator = broker.client(cluster.operator_token()).await;
    let put = |value: &'static [u8]| {
        coffer::operator::Put::new("shop/web/session", coffer::SecretData::Bytes(value.into()))
            .content_type("text/plain")
    };
    operator.put(put(b"refresh-canary-1")).await.unwrap();

    let token = cluster.token(
        "shop",
        "web",
        "coffer",
        Some("web-2"),
        Duration::from_secs(600),
    );
    let client = broker.client(token.clone()).await;
    let mut watch = client.watch(["shop/web/session"]).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.secrets.len(), 1);
    // Past two of the review's lifetimes: the stream is re-reviewed twice.
    tokio::time::sleep(Duration::from_secs(2 * TTL_SECONDS + 1)).await;
    operator.put(put(b"refresh-canary-2")).await.unwrap();
    let update = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = watch.next().await.unwrap().unwrap();
            if event
                .secrets
                .iter()
                .any(|s| s.expose_bytes() == Some(&b"refresh-canary-2"[..]))
            {
                return;
            }
        }
    })
    .await;
    assert!(update.is_ok(), "the rotation after the refreshes arrived");

    let page = broker.metrics();
    assert!(
        counter(&page, "coffer_watch_reauthentications_total") >= 1,
        "{page}"
    );
    assert_eq!(broker.auth_failure_reasons(), Vec::<String>::new());
    let output = broker.process.output();
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                && !l.contains("policy warning")
                && !l.contains("NOT FOR PRODUCTION")
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "a refresh is not a warning: {warnings:#?}"
    );
    assert!(!output.contains(&token) && !output.contains("refresh-canary"));
}

#[tokio::test]
async fn a_deleted_pods_token_is_refused_and_its_watch_closed_within_the_ttl() {
    let cluster = ApiServer::shared();
    let broker = broker(&cluster);
    cluster.shop_pod("web-1");
    broker
        .put_as(
            cluster.operator_token(),
            "shop/web/api-key",
            coffer::SecretData::Bytes(b"review-canary-81c0"[..].into()),
        )
        .await;

    let token = cluster.token(
        "shop",
        "web",
        "coffer",
        Some("web-1"),
        Duration::from_secs(600),
    );
    let client = broker.client(token.clone()).await;
    let secret = client
        .get("shop/web/api-key")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.process.output()));
    assert_eq!(secret.expose_bytes().unwrap(), b"review-canary-81c0");
    let mut stream = client.watch_connection(["shop/web/api-key"]).await.unwrap();
    stream.next().await.unwrap().unwrap();

    cluster.delete_pod("shop", "web-1");
    let deleted = Instant::now();
    let bound = Duration::from_secs(TTL_SECONDS) + API_SERVER_CACHE + Duration::from_secs(5);

    // The stream ends (at the review's TTL at the latest).
    let closed = tokio::time::timeout(bound, async {
        while let Some(item) = stream.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the watch outlived its deleted pod by {bound:?}"
    );

    // A new call with the same token is refused once the review says no.
    let refused = loop {
        match broker
            .client(token.clone())
            .await
            .get("shop/web/api-key")
            .await
        {
            Err(error) => break error,
            Ok(_) => {
                assert!(
                    deleted.elapsed() < bound,
                    "the deleted pod's token still read after {:?}",
                    deleted.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(refused.code(), Some(Code::Unauthenticated));
    eprintln!("refused {:?} after the pod was deleted", deleted.elapsed());
    let reopened = client.watch_connection(["shop/web/api-key"]).await;
    assert_eq!(
        reopened.err().and_then(|e| e.code()),
        Some(Code::Unauthenticated)
    );
    assert!(!broker.process.output().contains("review-canary-81c0"));
}
