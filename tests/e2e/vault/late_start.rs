//! The broker starts before Vault does: it serves gRPC at once, reports
//! NOT_SERVING and answers UNAVAILABLE until its first login succeeds, then
//! serves.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{
    BrokerProcess, Key, mint,
    openbao::{self, OpenBao, ROOT_TOKEN},
};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn a_broker_started_before_vault_is_not_serving_until_its_first_login() {
    let port = openbao::reserve_port();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("root-token");
    std::fs::write(&token, ROOT_TOKEN).unwrap();
    let config = dir.path().join("vault.yaml");
    std::fs::write(
        &config,
        format!(
            "address: http://127.0.0.1:{port}\nauth: {{method: token, tokenFile: {}}}\n\
             mounts: [{{prefix: shop, mount: secret}}]\n\
             limits: {{maxRetries: 1, initialBackoff: 50ms, requestTimeout: 1s}}\n",
            token.display()
        ),
    )
    .unwrap();

    // Nothing listens on the port yet: the broker starts anyway.
    let broker = BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start();
    assert_eq!(broker.health().await, ServingStatus::NotServing);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let refused = web.get("shop/db").await.unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable));
    broker.wait_for_log("Vault login failed", 1);

    let bao = OpenBao::start_at(port);
    bao.bao(&["kv", "put", "secret/shop/db", "password=late-canary"]);
    let until = Instant::now() + Duration::from_secs(90);
    while broker.health().await != ServingStatus::Serving {
        assert!(Instant::now() < until, "health never reported SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secret = web.get("shop/db").await.unwrap();
    assert_eq!(
        secret.data().key("password").unwrap().expose(),
        b"late-canary"
    );
    let log = broker.process.output();
    assert!(log.contains("logged in to Vault"));
    assert!(!log.contains("late-canary"), "no value in the broker's log");
}
