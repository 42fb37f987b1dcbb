//! Plaintext `http://` goes to loopback addresses and Unix sockets only: the
//! SDK, the sidecar and cofferctl refuse to send a token to any other host in
//! clear, unless the SDK's `danger_insecure_plaintext` door is opened.

use std::time::Duration;

use coffer::{Client, TokenSource};
use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, binary, mint};

/// A broker on every interface, addressed as `http://0.0.0.0:PORT`: the
/// connection works, but the address is not loopback.
fn broker_off_loopback() -> BrokerProcess {
    let broker = BrokerProcess::builder()
        .listen("0.0.0.0:0")
        .args(["--insecure"])
        .start();
    assert!(
        broker.endpoint.starts_with("http://0.0.0.0:"),
        "{}",
        broker.endpoint
    );
    broker
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_refuses_plaintext_off_loopback_unless_the_danger_door_is_open() {
    let broker = broker_off_loopback();
    let loopback = broker.endpoint.replace("0.0.0.0", "127.0.0.1");
    let admin = Client::builder(loopback)
        .token(TokenSource::from_static(mint(Key::Rsa, "ops", "admin")))
        .connect()
        .await
        .unwrap();
    admin
        .put(
            coffer::operator::Put::new("shop/db", coffer::SecretData::Bytes((&b"pw"[..]).into()))
                .content_type("text/plain"),
        )
        .await
        .unwrap();

    let refused = Client::builder(broker.endpoint.clone())
        .token(TokenSource::from_static(mint(Key::Ec, "shop", "web")))
        .connect()
        .await;
    assert!(
        matches!(refused, Err(coffer::Error::Plaintext(_))),
        "{refused:?}"
    );

    let opened = Client::builder(broker.endpoint.clone())
        .token(TokenSource::from_static(mint(Key::Ec, "shop", "web")))
        .danger_insecure_plaintext(true)
        .connect()
        .await
        .unwrap();
    let secret = opened.get("shop/db").await.unwrap();
    assert_eq!(secret.expose_bytes(), Some(&b"pw"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_and_cofferctl_refuse_plaintext_off_loopback() {
    let broker = broker_off_loopback();
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db, file: db}\n",
        SidecarOptions {
            args: &["--once", "--once-timeout", "30"],
            ..Default::default()
        },
    );
    let status = sidecar.process.wait(Duration::from_secs(20)).unwrap();
    let output = sidecar.process.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("refusing plaintext"), "{output}");

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, mint(Key::Rsa, "ops", "admin")).unwrap();
    let out = std::process::Command::new(binary("cofferctl"))
        .args([
            "get",
            "shop/db",
            "--broker",
            &broker.endpoint,
            "--token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing plaintext"), "{stderr}");
}
