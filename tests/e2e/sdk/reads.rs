//! The SDK against the real broker: typed reads and each error kind,
//! provoked by the situation that causes it.

use std::time::Duration;

use coffer::{Client, Error, RetryPolicy, SecretData, TokenSource, operator::Put};
use coffer_tests::{BrokerProcess, Key, mint};

const CANARY: &str = "canary-sdk-7c1e";

async fn seeded() -> BrokerProcess {
    let broker = BrokerProcess::builder().start();
    broker
        .put_map("shop/db", &[("user", "app"), ("password", CANARY)])
        .await;
    broker
        .put_bytes("shop/config", br#"{"port": 5432, "tls": true}"#)
        .await;
    broker.put_bytes("shop/plain", CANARY.as_bytes()).await;
    broker
}

#[derive(Debug, serde::Deserialize)]
struct Db {
    user: String,
    password: secrecy::SecretString,
}

#[derive(Debug, serde::Deserialize)]
struct Config {
    port: u16,
    tls: bool,
}

#[tokio::test(flavor = "multi_thread")]
async fn get_get_str_and_get_json_read_typed_values() {
    let broker = seeded().await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;

    let secret = web.get("shop/plain").await.unwrap();
    assert_eq!(secret.expose_str().unwrap(), CANARY);
    assert_eq!(secret.version(), 1);
    assert!(!format!("{secret:?}").contains(CANARY));

    let password = web.get_str("shop/db#password").await.unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&password), CANARY);
    assert!(!format!("{password:?}").contains(CANARY));

    let db: Db = web.get_json("shop/db").await.unwrap();
    assert_eq!(db.user, "app");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&db.password), CANARY);
    assert!(!format!("{db:?}").contains(CANARY));

    let config: Config = web.get_json("shop/config").await.unwrap();
    assert_eq!((config.port, config.tls), (5432, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_is_not_the_requested_json_is_a_decode_error_without_the_value() {
    let broker = seeded().await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let error = web.get_json::<Config>("shop/plain").await.unwrap_err();
    assert!(matches!(error, Error::Decode { .. }), "{error:?}");
    let text = format!("{error} {error:?}");
    assert!(!text.contains(CANARY), "{text}");
    assert!(text.contains("shop/plain"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_path_is_not_found() {
    let broker = seeded().await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let error = web.get("shop/nothing-here").await.unwrap_err();
    assert!(matches!(error, Error::NotFound(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_outside_the_policy_is_permission_denied() {
    let broker = seeded().await;
    let intruder = broker.client(mint(Key::Ec, "shop", "intruder")).await;
    let error = intruder.get("shop/db").await.unwrap_err();
    assert!(matches!(error, Error::PermissionDenied(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_an_untrusted_key_is_unauthenticated() {
    let broker = seeded().await;
    let forger = broker.client(mint(Key::ForeignEc, "shop", "web")).await;
    let error = forger.get("shop/db").await.unwrap_err();
    assert!(matches!(error, Error::Unauthenticated(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_path_is_invalid_argument() {
    let broker = seeded().await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let error = web.get("shop/../etc/passwd").await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_check_and_set_is_failed_precondition() {
    let broker = seeded().await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let stale = Put::new("shop/plain", SecretData::Bytes(b"late"[..].into())).only_if_version(7);
    let error = admin.put(stale).await.unwrap_err();
    assert!(matches!(error, Error::FailedPrecondition(_)), "{error:?}");
    let fresh = Put::new("shop/plain", SecretData::Bytes(b"next"[..].into())).only_if_version(1);
    assert_eq!(admin.put(fresh).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_is_gone_is_unavailable_after_the_retries() {
    let mut broker = seeded().await;
    broker.process.kill();
    let client = Client::builder(broker.endpoint.clone())
        .token(TokenSource::from_static(mint(Key::Ec, "shop", "web")))
        .retry(RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        })
        .connect_lazy()
        .await
        .unwrap();
    let error = client.get("shop/db").await.unwrap_err();
    assert!(matches!(error, Error::Unavailable(_)), "{error:?}");
    assert!(error.is_transient());
    let connect = Client::builder(broker.endpoint.clone())
        .token(TokenSource::from_static("t"))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(connect, Error::Unavailable(_)), "{connect:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_never_answers_is_deadline_exceeded() {
    // Accepts the connection, then says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let client = Client::builder(format!("http://{addr}"))
        .token(TokenSource::from_static("t"))
        .timeout(Duration::from_millis(300))
        .retry(RetryPolicy::none())
        .connect_lazy()
        .await
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(20), client.get("shop/db"))
        .await
        .expect("the client's own deadline ends the call")
        .unwrap_err();
    assert!(matches!(error, Error::DeadlineExceeded(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn from_env_reads_the_sidecars_variables() {
    let broker = seeded().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, mint(Key::Ec, "shop", "web")).unwrap();
    let env: std::collections::HashMap<String, String> = [
        ("COFFER_BROKER".to_string(), broker.endpoint.clone()),
        ("COFFER_TOKEN_FILE".to_string(), token.display().to_string()),
    ]
    .into();
    let client = coffer::ClientBuilder::from_env_with(&env)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client
            .get("shop/plain")
            .await
            .unwrap()
            .expose_str()
            .unwrap(),
        CANARY
    );
    let missing =
        coffer::ClientBuilder::from_env_with(&std::collections::HashMap::<String, String>::new())
            .unwrap_err();
    assert!(missing.to_string().contains("COFFER_BROKER"), "{missing}");
    let no_ca: std::collections::HashMap<String, String> = [
        (
            "COFFER_BROKER".to_string(),
            "https://127.0.0.1:1".to_string(),
        ),
        (
            "COFFER_CA_FILE".to_string(),
            "/nonexistent/ca.pem".to_string(),
        ),
    ]
    .into();
    let error = coffer::ClientBuilder::from_env_with(&no_ca)
        .unwrap()
        .connect_lazy()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::CaFile { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_value_reaches_the_brokers_output() {
    let broker = seeded().await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    let _ = web.get_json::<Config>("shop/plain").await;
    let _ = web.get_str("shop/db#password").await.unwrap();
    assert!(!broker.process.output().contains(CANARY));
}
