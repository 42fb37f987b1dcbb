//! Vault's capacity against a caller with a valid low-privilege token: "not
//! found" is remembered briefly, and each identity gets a fair share of the
//! read budget, so one tenant flooding misses cannot starve the others.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_broker::path::SecretName;
use coffer_broker::store::{
    SecretStore, SecretWrite, StoreError,
    vault::{VaultConfig, VaultStore},
};
use coffer_tests::{BrokerProcess, Key, mint, openbao::OpenBao};

fn broker(bao: &OpenBao, extra: &str) -> BrokerProcess {
    let config = bao.file("vault.yaml", &bao.config_yaml(extra));
    BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start()
}

#[tokio::test]
async fn a_caller_hammering_a_missing_path_costs_one_vault_read_per_interval() {
    let bao = OpenBao::start();
    let broker = broker(&bao, "cache: {negativeTtl: 2s}\n");
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let start = Instant::now();
    let mut asked = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let error = web.get("shop/missing").await.unwrap_err();
        assert_eq!(error.code(), Some(Code::NotFound));
        asked += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(asked >= 50, "the loop ran: {asked}");
    // Three seconds with a two-second memory: two reads, three at most.
    let reads = bao.audited("read", "secret/data/shop/missing");
    assert!(
        (1..=3).contains(&reads),
        "{reads} Vault reads for {asked} asks"
    );
}

#[tokio::test]
async fn a_write_through_the_store_is_readable_at_once_after_a_remembered_miss() {
    let bao = OpenBao::start();
    let config = VaultConfig::from_yaml(&bao.config_yaml("cache: {negativeTtl: 60s}\n")).unwrap();
    let store = VaultStore::connect(config).await.unwrap();
    assert!(matches!(
        store.get(&SecretName::valid("shop/new"), None).await,
        Err(StoreError::NotFound)
    ));
    let data = coffer::SecretData::Bytes(coffer::SecretBytes::from(&b"fresh"[..]));
    store
        .put(&SecretName::valid("shop/new"), SecretWrite::new(data, ""))
        .await
        .unwrap();
    let read = store
        .get(&SecretName::valid("shop/new"), None)
        .await
        .unwrap();
    assert_eq!(read.version, 1);
}

#[tokio::test]
async fn one_identity_flooding_misses_does_not_starve_another_identity() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=victim-canary"]);
    let broker = broker(
        &bao,
        "limits: {maxRequestsPerSecond: 10, perIdentityRequestsPerSecond: 5, \
         perIdentityBurst: 5, perIdentityMaxWait: 500ms}\n",
    );
    let attacker = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let victim = broker.client(mint(Key::Ec, "ops", "admin")).await;
    // Both tokens verified once and cached, so the flood reaches the store at
    // once instead of trickling in behind signature checks.
    for client in [&attacker, &victim] {
        let warm = client.get("shop/warm-up").await.unwrap_err();
        assert_eq!(warm.code(), Some(Code::NotFound));
    }

    // 200 distinct missing paths: without a per-identity share they would
    // queue 400 Vault calls (a read and a metadata lookup each), 40 seconds
    // of the global budget at 10/s, in front of everyone else.
    let flood = tokio::spawn(async move {
        let gets = (0..200).map(|i| {
            let attacker = attacker.clone();
            async move { attacker.get(&format!("shop/miss-{i}")).await }
        });
        futures::future::join_all(gets).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let secret = victim.get("shop/db").await.unwrap();
    let waited = start.elapsed();
    assert_eq!(
        secret.data().key("password").unwrap().expose(),
        b"victim-canary"
    );
    assert!(
        waited < Duration::from_secs(8),
        "the other identity waited {waited:?}"
    );

    let results = flood.await.unwrap();
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted)))
        .count();
    assert!(shed > 100, "the flood's excess is refused: {shed} of 200");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(e) if matches!(e.code(), Some(Code::ResourceExhausted | Code::NotFound)))),
        "every flood request is refused or not found"
    );
}

/// Regression (issue #27, found by the restart storm): pods of one service
/// account starting at once all ask for the same uncached path. Each found
/// no read in flight and waited for its share of Vault reads; only the one
/// that got it read, and every other was refused `RESOURCE_EXHAUSTED` when
/// its wait ended, although the read it needed had started meanwhile. Now
/// a caller whose wait ends joins that read, or takes what it left.
#[tokio::test(flavor = "multi_thread")]
async fn pods_of_one_identity_starting_at_once_share_one_read_and_none_is_refused() {
    let bao = OpenBao::start();
    let broker = broker(
        &bao,
        "limits: {perIdentityRequestsPerSecond: 4, perIdentityBurst: 1, perIdentityMaxWait: 500ms}\n",
    );
    bao.bao(&["kv", "put", "secret/shop/storm", "v=one"]);
    bao.bao(&["kv", "put", "secret/shop/first", "v=one"]);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    // The identity's burst is spent: every pod below waits for its share.
    web.get("shop/first").await.unwrap();
    let pods = 20;
    let gets = (0..pods).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { web.get("shop/storm").await.map(|_| ()) })
    });
    let mut refused = 0;
    for get in futures::future::join_all(gets).await {
        match get.unwrap() {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::ResourceExhausted) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(refused, 0, "{refused} of {pods} pods refused");
    assert_eq!(bao.audited("read", "secret/data/shop/storm"), 1);
}
