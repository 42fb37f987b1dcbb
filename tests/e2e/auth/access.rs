//! Callers outside the policy, or with tokens from another key, get nothing.

use std::time::Duration;

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, SidecarProcess, mint};

async fn seed(broker: &BrokerProcess) {
    broker.put_bytes("shop/db", b"s3cret").await;
}

#[tokio::test]
async fn service_account_outside_the_policy_is_denied_and_no_file_is_written() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;

    let stranger = broker.client(mint(Key::Rsa, "shop", "intruder")).await;
    let error = stranger.get("shop/db").await.unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));

    let mut sidecar = SidecarProcess::start(
        &broker,
        &mint(Key::Rsa, "shop", "intruder"),
        "  - path: shop/db\n    file: db\n",
        &["--once", "--once-timeout=10"],
    );
    let status = sidecar
        .process
        .wait(Duration::from_secs(20))
        .expect("sidecar --once exits");
    assert!(!status.success(), "a denied sidecar must fail");
    assert!(!sidecar.file("db").exists(), "no file may be written");
    assert!(
        sidecar.process.output().contains("PermissionDenied"),
        "{}",
        sidecar.process.output()
    );
}

#[tokio::test]
async fn tokens_signed_by_another_key_are_unauthenticated() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    for key in [Key::ForeignRsa, Key::ForeignEc] {
        let forger = broker.client(mint(key, "shop", "web")).await;
        let error = forger.get("shop/db").await.unwrap_err();
        assert_eq!(error.code(), Some(Code::Unauthenticated), "{key:?}");
    }
    // The same identity with the real keys is allowed.
    for key in [Key::Rsa, Key::Ec] {
        let web = broker.client(mint(key, "shop", "web")).await;
        assert_eq!(
            web.get("shop/db").await.unwrap().expose_bytes(),
            Some(&b"s3cret"[..]),
            "{key:?}"
        );
    }
}

#[tokio::test]
async fn sidecar_once_writes_and_exits_zero() {
    let broker = BrokerProcess::builder().start();
    seed(&broker).await;
    let mut sidecar = SidecarProcess::start(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - path: shop/db\n    file: db\n    mode: \"0440\"\n",
        &["--once"],
    );
    let status = sidecar
        .process
        .wait(Duration::from_secs(20))
        .expect("sidecar --once exits");
    assert!(status.success(), "{}", sidecar.process.output());
    assert_eq!(std::fs::read(sidecar.file("db")).unwrap(), b"s3cret");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(sidecar.file("db")).unwrap().mode() & 0o777,
        0o440
    );
}
