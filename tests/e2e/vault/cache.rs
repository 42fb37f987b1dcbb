//! One Vault read per secret version: single-flight, the value cache, and
//! one poller per watched path, counted in OpenBao's audit log.

use std::time::Duration;

use coffer::{SecretData, WatchEventKind};
use coffer_broker::path::SecretName;
use coffer_broker::store::{
    SecretStore,
    vault::{VaultConfig, VaultStore},
};
use coffer_tests::{BrokerProcess, Key, mint, openbao::OpenBao};

const SETTINGS: &str = "cache: {ttl: 60s}\npoll: {interval: 200ms, jitter: 0.1}\n";

fn broker(bao: &OpenBao) -> BrokerProcess {
    let config = bao.file("vault.yaml", &bao.config_yaml(SETTINGS));
    BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start()
}

fn value(data: &SecretData) -> &[u8] {
    data.key("v").unwrap().expose()
}

#[tokio::test]
async fn a_hundred_concurrent_broker_gets_make_one_vault_read() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/sf", "v=one"]);
    let broker = broker(&bao);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let gets = (0..100).map(|_| {
        let web = web.clone();
        tokio::spawn(async move { web.get("shop/sf").await })
    });
    for result in futures::future::join_all(gets).await {
        assert_eq!(value(result.unwrap().unwrap().data()), b"one");
    }
    assert_eq!(bao.audited("read", "secret/data/shop/sf"), 1);
}

#[tokio::test]
async fn concurrent_uncached_reads_share_one_vault_call() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/sf", "v=one"]);
    // No cache: only single-flight can merge these.
    let config = VaultConfig::from_yaml(&bao.config_yaml("cache: {ttl: 0s}\n")).unwrap();
    let store = VaultStore::connect(config).await.unwrap();
    let name = SecretName::valid("shop/sf");
    let reads = futures::future::join_all((0..100).map(|_| store.get(&name, None))).await;
    assert!(
        reads
            .iter()
            .all(|r| r.as_ref().is_ok_and(|s| value(&s.data) == b"one"))
    );
    assert_eq!(store.vault_reads(), 1);
    assert_eq!(bao.audited("read", "secret/data/shop/sf"), 1);
    // Once done, the next read is a new call.
    store
        .get(&SecretName::valid("shop/sf"), None)
        .await
        .unwrap();
    assert_eq!(bao.audited("read", "secret/data/shop/sf"), 2);
}

#[tokio::test]
async fn a_write_made_in_vault_reaches_every_watcher_with_one_read() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/w", "v=one"]);
    let broker = broker(&bao);
    let mut streams = Vec::new();
    for pod in ["web", "web"] {
        let client = broker.client(mint(Key::Ec, "shop", pod)).await;
        let mut stream = client.watch(["shop/w"]).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.kind, WatchEventKind::Snapshot);
        assert_eq!(value(first.secrets[0].data()), b"one");
        streams.push((client, stream));
    }

    bao.bao(&["kv", "put", "secret/shop/w", "v=two"]);
    for (_, stream) in &mut streams {
        let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the change arrives")
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, WatchEventKind::Update);
        assert_eq!(event.secrets[0].version(), 2);
        assert_eq!(value(event.secrets[0].data()), b"two");
    }
    let latest = streams[0].0.get("shop/w").await.unwrap();
    assert_eq!((latest.version(), value(latest.data())), (2, &b"two"[..]));
    // Version 1 once for the snapshots, version 2 once for both watchers and
    // the get.
    assert_eq!(bao.audited("read", "secret/data/shop/w"), 2);
}

#[tokio::test]
async fn many_watchers_of_a_path_share_one_poller_that_stops_with_them() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/p", "v=one"]);
    let config = VaultConfig::from_yaml(&bao.config_yaml(SETTINGS)).unwrap();
    let store = VaultStore::connect(config).await.unwrap();
    let mut receivers: Vec<_> = (0..10)
        .map(|_| store.subscribe(&SecretName::valid("shop/p")))
        .collect();
    assert_eq!(store.watched_paths(), 1);
    receivers[0].changed().await.unwrap();
    assert_eq!(*receivers[0].borrow(), 1);

    bao.bao(&["kv", "put", "secret/shop/p", "v=two"]);
    for rx in &mut receivers {
        rx.wait_for(|v| *v == 2).await.unwrap();
    }
    drop(receivers);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while store.watched_paths() != 0 {
        assert!(std::time::Instant::now() < until, "the poller stops");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
