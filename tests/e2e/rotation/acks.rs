//! Acknowledgements are authorized: a workload may only report versions of
//! paths it can read or watch, and `RotationStatus` shows nothing else.

use coffer::{Applied, ApplyState};
use coffer_tests::{BrokerProcess, Key, mint, policy::ADMIN, policy_of, rule};

/// `shop/payments` reads its own folder; `ops/admin` manages all of `shop`.
fn policy() -> String {
    policy_of(&[
        rule(
            "payments-reads",
            "shop/payments",
            &["shop/payments/*"],
            &["read", "watch"],
        ),
        rule("admin-manages-shop", "ops/admin", &["shop/**"], ADMIN),
    ])
}

fn applied(path: &str, version: u64) -> Vec<Applied> {
    vec![Applied {
        path: path.into(),
        version,
        state: ApplyState::Applied,
        reason: String::new(),
    }]
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_without_access_is_denied_and_not_shown_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder()
        .policy(&policy())
        .audit_file(&audit)
        .start();
    broker
        .put_bytes("shop/payments/stripe-key", b"sk_live")
        .await;

    let intruder = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let error = intruder
        .ack(applied("shop/payments/stripe-key", 999))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::PermissionDenied));

    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = admin.status("shop/payments/stripe-key").await.unwrap();
    assert!(status.workloads.is_empty(), "{:?}", status.workloads);

    // The refusal is in the audit trail like any other decision.
    let trail = std::fs::read_to_string(&audit).unwrap();
    assert!(
        trail.lines().any(|l| l.contains("\"AckSecrets\"")
            && l.contains("\"deny\"")
            && l.contains("shop/payments/stripe-key")),
        "{trail}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_of_a_readable_path_is_shown_with_its_issuer() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_bytes("shop/payments/stripe-key", b"sk").await;
    let payments = broker.client(mint(Key::Rsa, "shop", "payments")).await;
    payments
        .ack(applied("shop/payments/stripe-key", 1))
        .await
        .unwrap();
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = admin.status("shop/payments/stripe-key").await.unwrap();
    assert_eq!(status.workloads.len(), 1);
    let w = &status.workloads[0];
    assert_eq!((w.namespace.as_str(), w.version), ("shop", 1));
    assert_eq!(w.issuer, coffer_tests::ISSUER);
    assert!(!w.watching, "an ack alone does not make a watcher");
    assert_eq!(status.expected, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_denied_path_records_none_of_the_batch() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_bytes("shop/payments/stripe-key", b"sk").await;
    broker.put_bytes("shop/other", b"x").await;
    let payments = broker.client(mint(Key::Rsa, "shop", "payments")).await;
    let mut batch = applied("shop/payments/stripe-key", 1);
    batch.extend(applied("shop/other", 1));
    let error = payments.ack(batch).await.unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::PermissionDenied));
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = admin.status("shop/payments/stripe-key").await.unwrap();
    assert!(status.workloads.is_empty());
}
