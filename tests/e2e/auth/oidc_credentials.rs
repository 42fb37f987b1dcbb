//! The broker's own credential goes only to the OIDC discovery URL's origin:
//! a discovery document naming a `jwks_uri` on another origin (here another
//! port) gets the JWKS fetched without it, so a compromised or misconfigured
//! issuer cannot harvest the broker's token.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use coffer::Code;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, eventually, fixture, https::HttpsServer, mint,
};
use serde_json::json;

const BROKER_TOKEN: &str = "broker-own-oidc-credential";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const JWKS_PATH: &str = "/openid/v1/jwks";

#[tokio::test]
async fn a_jwks_uri_on_another_origin_gets_no_credential() {
    let jwks = std::fs::read_to_string(fixture("jwks-a.json")).unwrap();
    let keys = HttpsServer::kube_api_server(Arc::new(move |seen| match seen.path.as_str() {
        JWKS_PATH => (200, jwks.clone()),
        _ => (404, "{}".into()),
    }));
    let elsewhere = Arc::new(Mutex::new(String::new()));
    let discovery = {
        let elsewhere = elsewhere.clone();
        HttpsServer::kube_api_server(Arc::new(move |seen| {
            match seen.path.as_str() {
            DISCOVERY_PATH => (
                200,
                json!({"issuer": ISSUER, "jwks_uri": format!("{}{JWKS_PATH}", elsewhere.lock().unwrap())})
                    .to_string(),
            ),
            _ => (404, "{}".into()),
        }
        }))
    };
    *elsewhere.lock().unwrap() = keys.url.clone();

    let dir = tempfile::tempdir().unwrap();
    // One bundle trusting both test CAs, so only the origin differs.
    let bundle = dir.path().join("ca.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(&discovery.ca_file).unwrap()
            + &std::fs::read_to_string(&keys.ca_file).unwrap(),
    )
    .unwrap();
    let own_token = dir.path().join("token");
    std::fs::write(&own_token, BROKER_TOKEN).unwrap();
    let broker = BrokerProcess::builder().auth_config(&format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    oidc:\n      discoveryUrl: {}{DISCOVERY_PATH}\n      caFile: {}\n      tokenFile: {}\n",
            discovery.url,
            bundle.display(),
            own_token.display()
        )).start();
    eventually(Duration::from_secs(10), "the JWKS fetch", || {
        (keys.count(JWKS_PATH) >= 1).then_some(())
    });
    // The keys from the other origin work.
    let code = broker
        .read_code(mint(Key::Rsa, "shop", "web"), "shop/db")
        .await;
    assert_eq!(code, Some(Code::NotFound));

    // The discovery origin got the credential; the other origin never did.
    assert!(
        discovery
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {BROKER_TOKEN}")))
    );
    let seen = keys.requests();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.authorization.is_none()),
        "the jwks_uri origin received {:?}",
        seen.iter().map(|r| &r.authorization).collect::<Vec<_>>()
    );
}
