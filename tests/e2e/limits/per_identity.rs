//! Per-identity and per-connection limits, through the public gRPC API of
//! the real broker: load is shed with RESOURCE_EXHAUSTED, never by falling
//! over.

use std::time::{Duration, Instant};

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, mint, policy_with, rule};

/// The shared policy, and what these tests add to it.
fn policy() -> String {
    policy_with(&[rule(
        "api-watches-shop",
        "shop/api",
        &["shop/*"],
        &["read", "watch"],
    )])
}

#[tokio::test]
async fn the_65th_watch_of_one_identity_is_refused_and_a_closed_one_frees_its_slot() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
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
    let broker = BrokerProcess::builder()
        .policy(&policy())
        .args(["--max-requests-per-connection", "2"])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let token = mint(Key::Rsa, "shop", "web");

    // One HTTP/2 connection. Two requests whose bodies never end hold both
    // of its slots for as long as they are open (the broker waits for the
    // request message), so the limit is reached however fast it serves.
    let addr = broker.endpoint.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = |body: RawBody| {
        hyper::Request::post(format!("http://{addr}/coffer.v1.SecretBroker/GetSecret"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (open, body) = futures::channel::mpsc::channel(1);
        let response = sender.send_request(request(http_body_util::StreamBody::new(body)));
        held.push((open, tokio::spawn(response)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The third request on that connection is shed at once.
    let shed = sender.send_request(request(ended())).await.unwrap();
    assert_eq!(grpc_status(&shed), Some("8"), "RESOURCE_EXHAUSTED");

    // Other connections are not affected, and once the held requests end
    // the connection's slots come back.
    let web = broker.client(token.clone()).await;
    assert_eq!(web.get("shop/db").await.unwrap().version(), 1);
    for (open, response) in held {
        drop(open);
        let _ = response.await;
    }
    let served = sender.send_request(request(ended())).await.unwrap();
    assert_ne!(
        grpc_status(&served),
        Some("8"),
        "not shed once the slots are free"
    );
    assert_eq!(web.get("shop/db").await.unwrap().version(), 1);
}

/// A request body streamed by the test: it ends when its sender is dropped.
type RawBody = http_body_util::StreamBody<
    futures::channel::mpsc::Receiver<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >,
>;

/// A body that has already ended.
fn ended() -> RawBody {
    http_body_util::StreamBody::new(futures::channel::mpsc::channel(1).1)
}

/// A trailers-only answer's `grpc-status`.
fn grpc_status<B>(response: &hyper::Response<B>) -> Option<&str> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
}
