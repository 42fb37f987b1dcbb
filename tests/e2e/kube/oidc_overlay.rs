//! A real pod-bound token from the real API server's TokenRequest API
//! reaches a secret through the authentication configuration of the `vault`
//! overlay, as `kubectl kustomize` renders it, changed only in its
//! addresses: the discovery URL's host (the in-cluster
//! `kubernetes.default.svc` is this server's loopback address here) and the
//! two files a pod has at /var/run/secrets/kubernetes.io/serviceaccount.
//! The broker discovers the keys with its own service-account token: this
//! server does not allow anonymous discovery (kube_oidc_discovery.rs does).

use std::time::Duration;

use coffer::Code;
use coffer_tests::{BrokerProcess, deploy, eventually, kube::ApiServer};

const IN_CLUSTER_SERVER: &str = "https://kubernetes.default.svc/";
const POD_CREDENTIALS: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The overlay's ConfigMap `data.<key>`.
fn config_map(objects: &[serde_json::Value], name: &str, key: &str) -> String {
    deploy::find(objects, "ConfigMap", name)["data"][key]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_pod_bound_token_reaches_a_secret_through_the_vault_overlays_authentication() {
    let cluster = ApiServer::shared();
    let objects = deploy::objects("overlays/vault");

    // The broker's own credential, as its pod has it.
    let credentials = cluster.broker_pod_credentials();
    // The overlay's RBAC, applied for real: without it the broker's token
    // may not read the discovery endpoints.
    let binding = objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding"
                && o["metadata"]["name"] == "coffer-broker-issuer-discovery"
        })
        .unwrap();
    cluster.apply(&binding.to_string());

    let shipped = config_map(&objects, "coffer-auth", "auth.yaml");
    assert!(shipped.contains(IN_CLUSTER_SERVER) && shipped.contains(POD_CREDENTIALS));
    let auth = shipped
        .replace(IN_CLUSTER_SERVER, &format!("{}/", cluster.url))
        .replace(POD_CREDENTIALS, credentials.to_str().unwrap());
    let policy = config_map(&objects, "coffer-policy", "policy.yaml");
    let broker = BrokerProcess::builder()
        .policy(&policy)
        .auth_config(&auth)
        .start();
    broker.wait_for_log("JWKS fetched", 1);

    // The operator writes the secret; the example app's pod reads it.
    cluster.shop_pod("web-7d9f-abcde");
    broker
        .put_as(
            cluster.operator_token(),
            "shop/web/db-password",
            coffer::SecretData::Bytes(b"pod-bound-canary-5e1f"[..].into()),
        )
        .await;
    let pod_token = cluster.token(
        "shop",
        "web",
        "coffer",
        Some("web-7d9f-abcde"),
        Duration::from_secs(600),
    );
    let secret = broker
        .client(pod_token.clone())
        .await
        .get("shop/web/db-password")
        .await
        .unwrap();
    assert_eq!(secret.expose_bytes().unwrap(), b"pod-bound-canary-5e1f");

    // Outside its folder the same pod is refused.
    let refused = broker
        .client(pod_token)
        .await
        .get("shop/other/db-password")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::PermissionDenied));

    // A token for another audience (the API server's) is refused.
    let wrong_audience = cluster.token(
        "shop",
        "web",
        coffer_tests::kube::SA_ISSUER,
        Some("web-7d9f-abcde"),
        Duration::from_secs(600),
    );
    let refused = broker
        .client(wrong_audience)
        .await
        .get("shop/web/db-password")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unauthenticated));
    eventually(Duration::from_secs(5), "the audience refusal", || {
        broker.process.output().contains("audience").then_some(())
    });
    assert!(!broker.process.output().contains("pod-bound-canary-5e1f"));
}
