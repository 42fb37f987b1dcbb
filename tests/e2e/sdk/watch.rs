//! The SDK's watch against the real broker: every version once, in order,
//! across rotations and across a broker restart, with nothing lost.

use std::time::Duration;

use coffer::{
    Client, Error, RetryPolicy, TokenSource, WatchEventKind, WatchStream, operator::Rotate,
};
use coffer_tests::{BrokerProcess, Key, mint};

/// The next (path, version) pairs, failing after a generous bound.
async fn next(stream: &mut WatchStream) -> (WatchEventKind, Vec<(String, u64)>) {
    let event = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("not an error");
    let versions = event
        .secrets
        .iter()
        .map(|s| (s.path().to_string(), s.version()))
        .collect();
    (event.kind, versions)
}

/// Nothing more arrives within `wait`.
async fn quiet(stream: &mut WatchStream, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, stream.next()).await {
        panic!(
            "unexpected item: {:?}",
            item.map(|r| r.map(|e| e.secrets.len()))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_yields_each_rotation_once_in_order() {
    let broker = BrokerProcess::builder().start();
    broker.put_bytes("shop/db", b"v1").await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let mut watch = web.watch(["shop/db"]).await.unwrap();
    assert_eq!(
        next(&mut watch).await,
        (WatchEventKind::Snapshot, vec![("shop/db".into(), 1)])
    );
    for expected in 2..=4 {
        let version = admin
            .rotate(Rotate::new("shop/db").length(24))
            .await
            .unwrap();
        assert_eq!(version, expected);
        let (kind, versions) = next(&mut watch).await;
        assert_eq!(kind, WatchEventKind::Update);
        assert_eq!(versions, vec![("shop/db".to_string(), expected)]);
    }
    let current = web.get("shop/db").await.unwrap();
    assert_eq!(current.version(), 4);
    assert_eq!(current.expose_str().unwrap().len(), 24);
    quiet(&mut watch, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_survives_a_broker_restart_without_duplicates_or_losses() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::builder().store_dir(store.path()).start();
    let addr = broker.endpoint.trim_start_matches("http://").to_string();
    broker.put_bytes("shop/db", b"v1").await;
    broker.put_bytes("shop/api", b"a1").await;
    let web = Client::builder(broker.endpoint.clone())
        .token(TokenSource::from_static(mint(Key::Ec, "shop", "web")))
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        })
        .connect()
        .await
        .unwrap();
    let mut watch = web.watch(["shop/db", "shop/api"]).await.unwrap();
    let (kind, mut versions) = next(&mut watch).await;
    versions.sort();
    assert_eq!(kind, WatchEventKind::Snapshot);
    assert_eq!(
        versions,
        vec![("shop/api".to_string(), 1), ("shop/db".to_string(), 1)]
    );
    broker.put_bytes("shop/db", b"v2").await;
    assert_eq!(next(&mut watch).await.1, vec![("shop/db".to_string(), 2)]);

    // The broker goes away; two versions of shop/db are written meanwhile
    // through another broker on the same store; shop/api does not change.
    broker.process.kill();
    {
        let elsewhere = BrokerProcess::builder().store_dir(store.path()).start();
        elsewhere.put_bytes("shop/db", b"v3").await;
        elsewhere.put_bytes("shop/db", b"v4-final").await;
    }
    broker = BrokerProcess::builder()
        .listen(&addr)
        .store_dir(store.path())
        .start();

    // After the reconnect: the final version, once; shop/api (unchanged,
    // already yielded) does not come again.
    let (kind, versions) = next(&mut watch).await;
    assert_eq!(kind, WatchEventKind::Update);
    assert_eq!(versions, vec![("shop/db".to_string(), 4)]);
    quiet(&mut watch, Duration::from_millis(1500)).await;

    // And the watch is live on the new connection.
    broker.put_bytes("shop/api", b"a2").await;
    assert_eq!(next(&mut watch).await.1, vec![("shop/api".to_string(), 2)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_on_a_path_without_watch_rights_is_permission_denied() {
    let broker = BrokerProcess::builder().start();
    broker.put_bytes("shop/db", b"v1").await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    // The admin may read but not watch.
    let error = match admin.watch(["shop/db"]).await {
        Ok(mut stream) => stream.next().await.unwrap().unwrap_err(),
        Err(error) => error,
    };
    assert!(matches!(error, Error::PermissionDenied(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_reconnects_with_a_refreshed_token_file() {
    // No leeway: the first token is worthless the moment it expires.
    let broker = BrokerProcess::builder().args(["--leeway", "0"]).start();
    broker.put_bytes("shop/db", b"v1").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let short = coffer_tests::mint_claims(
        Key::Ec,
        &coffer_tests::claims("shop", "web", Some("web-0"), Duration::from_secs(3)),
    );
    std::fs::write(&token_file, short).unwrap();
    let web = Client::builder(broker.endpoint.clone())
        .token(TokenSource::file(&token_file))
        .connect()
        .await
        .unwrap();
    let mut watch = web.watch(["shop/db"]).await.unwrap();
    assert_eq!(next(&mut watch).await.1, vec![("shop/db".to_string(), 1)]);

    // The kubelet refreshes the token; the old one expires; a change comes.
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, mint(Key::Ec, "shop", "web")).unwrap();
    std::fs::rename(&tmp, &token_file).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.put_bytes("shop/db", b"v2").await;
    assert_eq!(next(&mut watch).await.1, vec![("shop/db".to_string(), 2)]);
}
