//! OIDC discovery against an issuer that negotiates content as the
//! Kubernetes API server does: `/openid/v1/jwks` is served only as
//! `application/jwk-set+json`, and a request that does not accept it is
//! answered 406 Not Acceptable (issue #21: a broker asking for
//! `application/json` alone never had keys). The stand-in is strict the same
//! way ([`HttpsServer::kube_api_server`]).

use std::{sync::Arc, time::Duration};

use coffer::Code;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, eventually, fixture,
    https::{HttpsServer, KUBE_JWKS_PATH, accept_admits},
    mint,
};
use serde_json::json;

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

#[tokio::test]
async fn the_broker_gets_its_keys_from_a_strict_api_server_and_a_token_passes() {
    let jwks = std::fs::read_to_string(fixture("jwks-a.json")).unwrap();
    let base = Arc::new(std::sync::Mutex::new(String::new()));
    let server = {
        let base = base.clone();
        HttpsServer::kube_api_server(Arc::new(move |seen| match seen.path.as_str() {
            DISCOVERY_PATH => (
                200,
                json!({
                    "issuer": ISSUER,
                    "jwks_uri": format!("{}{KUBE_JWKS_PATH}", base.lock().unwrap()),
                })
                .to_string(),
            ),
            KUBE_JWKS_PATH => (200, jwks.clone()),
            _ => (404, "{}".into()),
        }))
    };
    *base.lock().unwrap() = server.url.clone();
    let broker = BrokerProcess::builder().auth_config(&format!(
            "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    oidc:\n      discoveryUrl: {}{DISCOVERY_PATH}\n      caFile: {}\n",
            server.url,
            server.ca_file.display(),
        )).start();
    eventually(Duration::from_secs(10), "the JWKS request", || {
        (server.count(KUBE_JWKS_PATH) >= 1).then_some(())
    });

    // A token signed by a key of that set is accepted (shop/db is absent:
    // NotFound, not Unauthenticated).
    let code = broker
        .read_code(mint(Key::Rsa, "shop", "web"), "shop/db")
        .await;
    assert_eq!(
        code,
        Some(Code::NotFound),
        "refused: {:?}; the server refused {:?}",
        broker.auth_failure_reasons(),
        server.not_acceptable()
    );

    // No request was refused, and each accepted what its answer is.
    assert!(
        server.not_acceptable().is_empty(),
        "{:?}",
        server.not_acceptable()
    );
    for seen in server.requests() {
        let served = match seen.path.as_str() {
            KUBE_JWKS_PATH => "application/jwk-set+json",
            _ => "application/json",
        };
        assert!(
            accept_admits(seen.accept.as_deref(), served),
            "{} with Accept {:?}",
            seen.path,
            seen.accept
        );
        assert_eq!(seen.status, 200, "{}", seen.path);
    }
    assert!(
        !broker.process.output().contains("JWKS fetch failed"),
        "{}",
        broker.process.output()
    );
}
