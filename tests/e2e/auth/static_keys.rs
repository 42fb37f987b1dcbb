//! Static keys for air-gapped clusters: PEM public keys (as given to the API
//! server's `--service-account-key-file`) and JWKS files, reloaded when the
//! file changes, with no restart.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use coffer::Code;
use coffer_tests::{AUDIENCE, BrokerProcess, ISSUER, fixture};
use jsonwebtoken::{Algorithm, EncodingKey};
use rustls_pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};

/// The kid Kubernetes gives a PEM key: base64url(SHA-256(DER SPKI)).
fn kubernetes_kid(pub_pem: &str) -> String {
    let der = SubjectPublicKeyInfoDer::from_pem_file(fixture(pub_pem)).unwrap();
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()))
}

fn ec_token(pod: &str) -> String {
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-a.pem")).unwrap()).unwrap();
    coffer_tests::claims("shop", "web", Some(pod), Duration::from_secs(600))
        .sign(Algorithm::ES256, &kubernetes_kid("ec-a.pub.pem"), &key)
        .unwrap()
}

fn rsa_token() -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-a.pem")).unwrap()).unwrap();
    coffer_tests::claims("shop", "web", None, Duration::from_secs(600))
        .sign(Algorithm::RS256, &kubernetes_kid("rsa-a.pub.pem"), &key)
        .unwrap()
}

#[tokio::test]
async fn pem_keys_verify_and_a_changed_file_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("sa.pub");
    std::fs::copy(fixture("rsa-a.pub.pem"), &pem).unwrap();
    let config = dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    pemFile: {{path: {}, checkIntervalSeconds: 1}}\n",
            pem.display()
        ),
    )
    .unwrap();
    let broker = BrokerProcess::builder()
        .auth_args(["--auth-config".as_ref(), config.as_os_str()])
        .start();
    let code = |token: String| broker.read_code(token, "shop/db");

    // The RSA key is there (NotFound: authenticated, the secret is absent).
    assert_eq!(code(rsa_token()).await, Some(Code::NotFound));
    assert_eq!(code(ec_token("web-0")).await, Some(Code::Unauthenticated));
    assert_eq!(
        broker.auth_failure_reasons().last().map(String::as_str),
        Some("unknown_kid")
    );

    // The operator adds the EC key to the file; the broker picks it up.
    let both = std::fs::read_to_string(fixture("rsa-a.pub.pem")).unwrap()
        + &std::fs::read_to_string(fixture("ec-a.pub.pem")).unwrap();
    let tmp = dir.path().join("sa.pub.tmp");
    std::fs::write(&tmp, both).unwrap();
    std::fs::rename(&tmp, &pem).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let mut attempt = 0;
    loop {
        attempt += 1;
        if code(ec_token(&format!("web-{attempt}"))).await == Some(Code::NotFound) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the new key was never accepted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken file keeps the last good keys.
    std::fs::write(&pem, "-----BEGIN PUBLIC KEY-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        code(ec_token("web-after-break")).await,
        Some(Code::NotFound)
    );
    // The check that request started reads the file in the background.
    broker.wait_for_log("keeping the last good keys", 1);
}
