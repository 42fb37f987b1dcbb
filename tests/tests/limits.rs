//! Per-identity and per-connection limits, through the public gRPC API of
//! the real broker: load is shed with RESOURCE_EXHAUSTED, never by falling
//! over.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, mint};

const POLICY: &str = r#"
rules:
  - name: web-watches-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: api-watches-shop
    subjects: [{namespace: shop, serviceAccount: api}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write]
"#;

#[tokio::test]
async fn the_65th_watch_of_one_identity_is_refused_and_a_closed_one_frees_its_slot() {
    let broker = BrokerProcess::start(POLICY);
    broker.put_bytes("shop/db", b"v1").await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;

    let mut open = Vec::new();
    for _ in 0..64 {
        let mut stream = web.watch(["shop/db"]).await.unwrap();
        stream.next().await.unwrap().unwrap();
        open.push(stream);
    }
    let refused = match web.watch(["shop/db"]).await {
        Ok(mut stream) => stream.next().await.unwrap().unwrap_err(),
        Err(error) => error,
    };
    assert_eq!(refused.code(), Some(Code::ResourceExhausted));

    // Another identity has its own slots.
    let api = broker.client(mint(Key::Ec, "shop", "api")).await;
    let mut other = api.watch(["shop/db"]).await.unwrap();
    assert_eq!(other.next().await.unwrap().unwrap().secrets[0].version(), 1);

    // Closing one stream gives its slot back.
    drop(open.pop());
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match web.watch(["shop/db"]).await {
            Ok(mut stream) => match stream.next().await.unwrap() {
                Ok(snapshot) => {
                    assert_eq!(snapshot.secrets[0].version(), 1);
                    break;
                }
                Err(error) => assert_eq!(error.code(), Some(Code::ResourceExhausted)),
            },
            Err(error) => assert_eq!(error.code(), Some(Code::ResourceExhausted)),
        }
        assert!(
            Instant::now() < until,
            "the closed watch's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn requests_over_the_per_connection_limit_are_refused_and_the_broker_keeps_serving() {
    let broker = BrokerProcess::start_with(POLICY, &["--max-requests-per-connection", "2"]);
    broker.put_bytes("shop/db", b"v1").await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    // One request first, so the token is verified and cached.
    web.get("shop/db").await.unwrap();

    // Batches of 256 reads each keep the broker busy long enough to overlap.
    let paths: Vec<String> = (0..256).map(|i| format!("shop/k{i}")).collect();
    let gets = (0..100).map(|_| {
        let (web, paths) = (web.clone(), paths.clone());
        async move { web.get_many(paths).await }
    });
    let results = futures::future::join_all(gets).await;
    let shed = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted)))
        .count();
    assert!(
        shed > 0,
        "100 concurrent batches on one connection, none shed"
    );
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted))),
        "every request is served or shed"
    );

    // The broker did not fall over: the next request is served.
    assert_eq!(web.get("shop/db").await.unwrap().version(), 1);
}
