//! A token's lifetime bounds everything it opens: a watch stream ends with
//! `UNAUTHENTICATED` at the token's `exp` (a stolen token does not buy the
//! rotations after it), a sidecar whose token is refreshed reconnects and
//! keeps receiving rotations, and a verification cached for a key that has
//! left the key set no longer counts.

use std::time::Duration;

use coffer::Code;
use coffer_broker::auth::signer::DevSigner;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, SidecarProcess, eventually, jwks_file_auth, mint_claims,
};

/// A `shop/web` token that expires `ttl` from now.
fn short_token(ttl: Duration) -> String {
    mint_claims(
        Key::Rsa,
        &coffer_tests::claims("shop", "web", Some("web-0"), ttl),
    )
}

/// Replaces a file atomically, as the kubelet refreshes a projected token.
fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_watch_ends_unauthenticated_when_its_token_expires() {
    let broker = BrokerProcess::builder().start();
    broker.put_bytes("shop/db", b"v1").await;
    let client = broker.client(short_token(Duration::from_secs(3))).await;
    let mut stream = client.watch(["shop/db"]).await.unwrap();
    let snapshot = stream.next().await.unwrap().unwrap();
    assert_eq!(snapshot.secrets[0].version(), 1);

    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.put_bytes("shop/db", b"v2-after-expiry").await;

    // The next message is the end, not the new version.
    let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ended or delivered")
        .expect("a message");
    let error = next.expect_err("the update is not delivered");
    assert_eq!(error.code(), Some(Code::Unauthenticated));
    assert!(stream.next().await.is_none(), "the stream is over");
}

#[tokio::test]
async fn a_sidecar_with_a_refreshed_token_keeps_receiving_rotations() {
    // No leeway: the first token is worthless the moment it expires.
    let broker = BrokerProcess::builder().args(["--leeway", "0"]).start();
    broker.put_bytes("shop/db", b"first").await;
    let sidecar = SidecarProcess::start(
        &broker,
        &short_token(Duration::from_secs(3)),
        "  - path: shop/db\n    file: db\n",
        &[],
    );
    sidecar.wait_for_files(&["db"], Duration::from_secs(20));
    assert_eq!(std::fs::read(sidecar.file("db")).unwrap(), b"first");

    // The kubelet refreshes the token before it expires.
    replace(
        &sidecar.token_file(),
        &short_token(Duration::from_secs(3600)),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    broker.put_bytes("shop/db", b"second").await;
    eventually(Duration::from_secs(30), "the rotation past exp", || {
        (std::fs::read(sidecar.file("db")).ok()? == b"second").then_some(())
    });
    broker.put_bytes("shop/db", b"third").await;
    eventually(Duration::from_secs(30), "the next rotation", || {
        (std::fs::read(sidecar.file("db")).ok()? == b"third").then_some(())
    });
    // The first stream really was ended by the broker.
    broker.wait_for_log("watch closed: the token expired", 1);
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_file_revokes_its_cached_verifications() {
    let dir = tempfile::tempdir().unwrap();
    let old = DevSigner::generate(ISSUER).unwrap();
    let new = DevSigner::generate(ISSUER).unwrap();
    let both = {
        let mut a: serde_json::Value = serde_json::from_str(&old.jwks_json()).unwrap();
        let b: serde_json::Value = serde_json::from_str(&new.jwks_json()).unwrap();
        a["keys"]
            .as_array_mut()
            .unwrap()
            .extend(b["keys"].as_array().unwrap().iter().cloned());
        a.to_string()
    };
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &both).unwrap();
    let broker = BrokerProcess::builder()
        .auth_config(&jwks_file_auth(&jwks, 0))
        .start();
    let mint = |signer: &DevSigner| {
        signer
            .mint(AUDIENCE, "shop", "web", None, Duration::from_secs(600))
            .unwrap()
    };
    let (old_token, new_token) = (mint(&old), mint(&new));
    let code = |token: String| broker.read_code(token, "shop/db");
    // Verified (and cached): shop/db is absent, so NotFound.
    assert_eq!(code(old_token.clone()).await, Some(Code::NotFound));
    assert_eq!(code(old_token.clone()).await, Some(Code::NotFound));

    // The issuer rotates the old key out.
    replace(&jwks, &new.jwks_json());
    // A due check reloads the file in the background (auth/files.rs), so the
    // call that starts it may still be served by the keys held; the old key
    // must be gone within a few calls, and its cached answer with it.
    let mut refused = code(old_token.clone()).await;
    for _ in 0..50 {
        if refused == Some(Code::Unauthenticated) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        refused = code(old_token.clone()).await;
    }
    assert_eq!(refused, Some(Code::Unauthenticated));
    assert_eq!(code(new_token).await, Some(Code::NotFound));
    broker.wait_for_log("its key left the key set", 1);
}
