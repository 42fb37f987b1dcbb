//! The broker follows its policy file: a valid new policy applies to new
//! requests and re-checks open watches; an invalid one is refused and the
//! old policy stays.

use std::time::Duration;

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, POLICY, mint};

/// POLICY without the rule that lets `shop/web` read.
const REVOKED: &str = r#"
rules:
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, rollback, list, status]
"#;

async fn seed(broker: &BrokerProcess) {
    broker.put_bytes("shop/db", b"s3cret").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoking_access_closes_an_open_watch_with_permission_denied() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let mut watch = web.watch(["shop/db"]).await.unwrap();
    let snapshot = watch.next().await.unwrap().unwrap();
    assert_eq!(snapshot.secrets[0].expose_bytes(), Some(&b"s3cret"[..]));

    broker.write_policy(REVOKED);
    let end = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch ends after the policy changes");
    let error = end.expect("an error, not a clean end").unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert!(broker.process.output().contains("policy reloaded"));

    // New requests are refused too.
    let error = web.get("shop/db").await.unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_that_keeps_access_survives_a_reload() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let mut watch = web.watch(["shop/db"]).await.unwrap();
    watch.next().await.unwrap().unwrap();

    // Same grants, new rule name: the watch stays open and keeps updating.
    broker.write_policy(&POLICY.replace("web-reads-shop", "web-still-reads-shop"));
    broker.wait_for_log("policy reloaded", 1);
    broker.put_bytes("shop/db", b"v2").await;
    let update = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("an update arrives")
        .unwrap()
        .unwrap();
    assert_eq!(update.secrets[0].expose_bytes(), Some(&b"v2"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_grant_applies_to_new_requests() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    let intruder = broker.client(mint(Key::Rsa, "shop", "intruder")).await;
    assert_eq!(
        intruder.get("shop/db").await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    broker.write_policy(&format!(
        "{POLICY}  - name: intruder-now-allowed\n    subjects: [{{namespace: shop, serviceAccount: intruder}}]\n    paths: [shop/db]\n    capabilities: [read]\n"
    ));
    broker.wait_for_log("policy reloaded", 1);
    assert_eq!(
        intruder.get("shop/db").await.unwrap().expose_bytes(),
        Some(&b"s3cret"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_policy_file_is_refused_and_the_old_policy_stays() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let mut watch = web.watch(["shop/db"]).await.unwrap();
    watch.next().await.unwrap().unwrap();

    // A typo'd key that would otherwise revoke everything.
    broker.write_policy("rules:\n  - subjcts: []\n");
    broker.wait_for_log("policy reload refused", 1);
    let log = broker.process.output();
    assert!(log.contains("unknown field `subjcts`"), "{log}");
    assert!(!log.contains("policy reloaded"), "{log}");

    // The old policy is still in force, for new requests and the open watch.
    assert_eq!(
        web.get("shop/db").await.unwrap().expose_bytes(),
        Some(&b"s3cret"[..])
    );
    broker.put_bytes("shop/db", b"v2").await;
    let update = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch is still open")
        .unwrap()
        .unwrap();
    assert_eq!(update.secrets[0].expose_bytes(), Some(&b"v2"[..]));
}
