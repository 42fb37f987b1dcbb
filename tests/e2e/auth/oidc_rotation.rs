//! OIDC discovery and JWKS rotation against a local HTTPS issuer (its own
//! CA, made in the test): the issuer adds a key and signs with it, and the
//! broker accepts the new tokens without a restart; a flood of forged kids
//! costs the issuer at most one JWKS fetch per interval; a failing issuer
//! leaves the last good keys in place.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use coffer::Code;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, eventually, fixture, https::HttpsServer, mint,
    mint_claims,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use serde_json::{Value, json};

const JWKS_PATH: &str = "/openid/v1/jwks";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const MIN_REFRESH: Duration = Duration::from_secs(2);

/// The public JWK of the `ec-b` fixture key, published as kid `ec-b`.
fn ec_b_jwk() -> Value {
    let der = PrivateKeyDer::from_pem_file(fixture("ec-b.pem")).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        der.secret_der(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let point = pair.public_key().as_ref();
    json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": "ec-b",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    })
}

fn mint_ec_b(kid: &str) -> String {
    let key = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-b.pem")).unwrap()).unwrap();
    coffer_tests::claims("shop", "web", None, Duration::from_secs(600))
        .sign(Algorithm::ES256, kid, &key)
        .unwrap()
}

/// Authenticated and authorized: shop/web may read shop/db, which is absent.
async fn accepted(broker: &BrokerProcess, token: String) -> bool {
    let error = broker.client(token).await.get("shop/db").await.unwrap_err();
    match error.code() {
        Some(Code::NotFound) => true,
        Some(Code::Unauthenticated) => false,
        other => panic!("unexpected answer {other:?}: {error}"),
    }
}

#[tokio::test]
async fn rotation_is_picked_up_and_forged_kids_cannot_amplify_fetches() {
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks-a.json")).unwrap()).unwrap();
    let keys = Arc::new(Mutex::new(jwks["keys"].as_array().unwrap().clone()));
    let failing = Arc::new(Mutex::new(false));
    let base = Arc::new(Mutex::new(String::new()));
    let server = {
        let (keys, failing, base) = (keys.clone(), failing.clone(), base.clone());
        HttpsServer::kube_api_server(Arc::new(move |seen| {
            match seen.path.as_str() {
            DISCOVERY_PATH => (
                200,
                json!({"issuer": ISSUER, "jwks_uri": format!("{}{JWKS_PATH}", base.lock().unwrap())})
                    .to_string(),
            ),
            JWKS_PATH if *failing.lock().unwrap() => (500, "{}".into()),
            JWKS_PATH => (200, json!({"keys": *keys.lock().unwrap()}).to_string()),
            _ => (404, "{}".into()),
        }
        }))
    };
    *base.lock().unwrap() = server.url.clone();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auth.yaml");
    std::fs::write(
        &config,
        format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    oidc:\n      discoveryUrl: {}{DISCOVERY_PATH}\n      caFile: {}\n      timeoutSeconds: 5\n      minRefreshIntervalSeconds: {}\n      refreshIntervalSeconds: 3600\n",
            server.url,
            server.ca_file.display(),
            MIN_REFRESH.as_secs()
        ),
    )
    .unwrap();
    let broker = BrokerProcess::builder()
        .auth_args(["--auth-config".as_ref(), config.as_os_str()])
        .start();
    eventually(Duration::from_secs(10), "the first JWKS fetch", || {
        (server.count(JWKS_PATH) >= 1).then_some(())
    });
    assert!(accepted(&broker, mint(Key::Ec, "shop", "web")).await);

    // Not yet published: refused as an unknown kid.
    assert!(!accepted(&broker, mint_ec_b("ec-b")).await);
    assert_eq!(
        broker.auth_failure_reasons().last().map(String::as_str),
        Some("unknown_kid")
    );

    // The issuer adds the key; once the interval has passed, the next token
    // naming it makes the broker fetch again and accept it, without restart.
    keys.lock().unwrap().push(ec_b_jwk());
    std::thread::sleep(MIN_REFRESH + Duration::from_millis(300));
    assert!(accepted(&broker, mint_ec_b("ec-b")).await);

    // A flood of forged kids: at most one fetch per interval.
    let before = server.count(JWKS_PATH);
    let started = Instant::now();
    for i in 0..60 {
        assert!(!accepted(&broker, mint_ec_b(&format!("forged-{i}"))).await);
    }
    let fetches = server.count(JWKS_PATH) - before;
    let intervals = (started.elapsed().as_secs_f64() / MIN_REFRESH.as_secs_f64()).floor() as usize;
    assert!(
        fetches <= 1 + intervals,
        "{fetches} JWKS fetches for 60 forged kids over {intervals} full interval(s)"
    );

    // The issuer fails: the last good keys keep working.
    *failing.lock().unwrap() = true;
    std::thread::sleep(MIN_REFRESH + Duration::from_millis(300));
    let failed_before = server.count(JWKS_PATH);
    assert!(!accepted(&broker, mint_ec_b("forged-after-outage")).await);
    eventually(Duration::from_secs(10), "the failed refetch", || {
        (server.count(JWKS_PATH) > failed_before).then_some(())
    });
    // A token never seen before, so the verification cache cannot answer.
    let fresh = coffer_tests::claims(
        "shop",
        "web",
        Some("web-after-outage"),
        Duration::from_secs(900),
    );
    assert!(accepted(&broker, mint_claims(Key::Rsa, &fresh)).await);
}
