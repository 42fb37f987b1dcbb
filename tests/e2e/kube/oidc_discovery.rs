//! OIDC discovery against the real API server, anonymous (the cluster binds
//! `system:service-account-issuer-discovery` to unauthenticated users):
//! what the server serves and how strictly, and a broker that discovers
//! its keys with no credential of its own. (With the broker's own token:
//! kube_oidc_overlay.rs.)

use std::time::Duration;

use coffer::Code;
use coffer_tests::{
    BrokerProcess,
    kube::{ApiServer, SA_ISSUER},
};
use serde_json::Value;

const DISCOVERY: &str = "/.well-known/openid-configuration";
const JWKS: &str = "/openid/v1/jwks";

#[test]
fn the_api_server_serves_its_jwks_only_as_a_jwk_set() {
    let cluster = ApiServer::shared();
    cluster.allow_anonymous_discovery();

    let (status, _, body) = cluster.get_raw(DISCOVERY, None, "application/json");
    assert_eq!(status, 200, "{body}");
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["issuer"], SA_ISSUER);
    assert_eq!(discovery["jwks_uri"], format!("{}{JWKS}", cluster.url));

    // The route a stand-in must play as strictly: application/json alone is
    // not acceptable to it.
    let (status, _, _) = cluster.get_raw(JWKS, None, "application/json");
    assert_eq!(status, 406);
    let (status, content_type, body) = cluster.get_raw(JWKS, None, "application/jwk-set+json");
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/jwk-set+json");
    let keys: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys["keys"][0]["alg"], "RS256");
}

#[tokio::test]
async fn a_broker_discovers_the_keys_anonymously_and_accepts_a_real_token() {
    let cluster = ApiServer::shared();
    cluster.allow_anonymous_discovery();
    let broker = BrokerProcess::builder().auth_config(&format!(
            "authenticators:\n  - issuer: {SA_ISSUER}\n    audiences: [coffer]\n    oidc:\n      discoveryUrl: {}{DISCOVERY}\n      caFile: {}\n",
            cluster.url,
            cluster.ca_file.display()
        )).start();
    broker.wait_for_log("JWKS fetched", 1);

    let namespace = cluster.namespace("oidc");
    cluster.service_account(&namespace, "web");
    cluster.pod(&namespace, "web-0", "web");
    let token = cluster.token(
        &namespace,
        "web",
        "coffer",
        Some("web-0"),
        Duration::from_secs(600),
    );
    // Authenticated (the key verified it), then refused by the policy,
    // which names only shop/web: PERMISSION_DENIED, not UNAUTHENTICATED.
    let error = broker.client(token).await.get("shop/db").await.unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    assert!(!broker.process.output().contains("keys_unavailable"));
}
