//! One unusable key (symmetric, EdDSA, or for encryption) in an issuer's
//! JWKS is skipped with a warning naming its kid, and the other keys keep
//! working: an issuer's key rotation is not an outage.

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, fixture, jwks_file_auth, mint};
use serde_json::{Value, json};

const OCT_SECRET: &str = "c2VjcmV0LWhtYWMta2V5LW1hdGVyaWFsLWNhbmFyeQ";

#[tokio::test]
async fn a_jwks_file_with_an_oct_key_still_verifies_with_the_others() {
    let mut jwks: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks-a.json")).unwrap()).unwrap();
    let keys = jwks["keys"].as_array_mut().unwrap();
    keys.insert(
        0,
        json!({"kty": "oct", "kid": "hmac-1", "k": OCT_SECRET, "alg": "HS256"}),
    );
    keys.push(json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}));
    keys.push(json!({"kty": "RSA", "use": "enc", "kid": "enc-1",
        "n": keys[1]["n"].clone(), "e": "AQAB"}));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks.to_string()).unwrap();
    let broker = BrokerProcess::builder()
        .auth_config(&jwks_file_auth(&file, 10))
        .start();
    for key in [Key::Rsa, Key::Ec] {
        let error = broker
            .client(mint(key, "shop", "web"))
            .await
            .get("shop/db")
            .await
            .unwrap_err();
        // Authenticated and authorized; the secret is absent.
        assert_eq!(error.code(), Some(Code::NotFound), "{key:?}");
    }
    let output = broker.process.output();
    for kid in ["hmac-1", "ed-1", "enc-1"] {
        assert!(
            output
                .lines()
                .any(|l| l.contains("JWKS key skipped") && l.contains(kid)),
            "{kid} not reported:\n{output}"
        );
    }
    assert!(!output.contains(OCT_SECRET), "key material was logged");
}
