//! Degraded mode against a real OpenBao and the real broker: when Vault is
//! stopped or sealed, cached values are served up to the staleness limit;
//! past it the answer is UNAVAILABLE (never an empty secret) and health
//! reports NOT_SERVING.

use std::time::{Duration, Instant};

use coffer::{Client, Code};
use coffer_tests::{BrokerProcess, Key, mint, openbao::OpenBao};
use tonic_health::pb::health_check_response::ServingStatus;

fn broker(bao: &OpenBao) -> BrokerProcess {
    let config = bao.file(
        "vault.yaml",
        &bao.config_yaml(
            "cache: {ttl: 1s, maxStaleness: 6s}\n\
             poll: {interval: 300ms}\n\
             limits: {maxRetries: 1, initialBackoff: 50ms, requestTimeout: 1s}\n",
        ),
    );
    BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start()
}

async fn eventually_unavailable(web: &Client) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        match web.get("shop/db").await {
            // Still within the staleness limit: the cached value, never an
            // empty one.
            Ok(secret) => assert_eq!(
                secret.data().key("password").unwrap().expose(),
                b"cached-canary"
            ),
            Err(error) => {
                assert_eq!(error.code(), Some(Code::Unavailable));
                assert!(
                    !error.to_string().contains("127.0.0.1"),
                    "no backend detail reaches the client: {error}"
                );
                return;
            }
        }
        assert!(Instant::now() < until, "never became unavailable");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn eventually_not_serving(broker: &BrokerProcess) {
    let until = Instant::now() + Duration::from_secs(60);
    while broker.health().await != ServingStatus::NotServing {
        assert!(Instant::now() < until, "health never reported NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn degrades(outage: impl FnOnce(&mut OpenBao)) {
    let mut bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=cached-canary"]);
    let broker = broker(&bao);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let password = |s: &coffer::Secret| s.data().key("password").unwrap().expose().to_vec();
    assert_eq!(
        password(&web.get("shop/db").await.unwrap()),
        b"cached-canary"
    );
    assert_eq!(broker.health().await, ServingStatus::Serving);

    outage(&mut bao);
    // Past the cache TTL, so the broker asks Vault, fails, and falls back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = web.get("shop/db").await.unwrap();
    assert_eq!(password(&stale), b"cached-canary");
    assert_eq!(stale.version(), 1);

    eventually_unavailable(&web).await;
    eventually_not_serving(&broker).await;
    assert!(!broker.process.output().contains("cached-canary"));
}

#[tokio::test]
async fn a_stopped_vault_serves_the_cache_then_unavailable() {
    degrades(|bao| bao.process.kill()).await;
}

#[tokio::test]
async fn a_sealed_vault_serves_the_cache_then_unavailable() {
    degrades(|bao| bao.seal()).await;
}
