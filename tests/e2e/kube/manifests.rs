//! The shipped manifests against the real API server (v1.20): every
//! overlay's and example's objects through `kubectl apply --dry-run=server`,
//! with the refusals that are only about this old server's API versions
//! listed by name; and every overlay's RBAC applied for real and checked
//! with `kubectl auth can-i` as the service accounts it binds.
//!
//! deploy/ targets Kubernetes 1.24+ (docs/deploy.md, "Kubernetes
//! versions"): gRPC probes are 1.24+, `policy/v1` PodDisruptionBudgets
//! 1.21+, native sidecars 1.29+. What 1.20 refuses for those reasons is
//! the list below; anything else refused is a bug in the manifests.

use coffer_tests::{deploy, kube::ApiServer};
use serde_json::Value;

/// (kustomization, kind, name, what the refusal must say): the objects a
/// 1.20 server refuses for a feature of a later Kubernetes release.
const REFUSED_BY_1_20: &[(&str, &str, &str, &str)] = &[
    // policy/v1 is 1.21+.
    (
        "overlays/vault",
        "PodDisruptionBudget",
        "coffer-broker",
        "policy/v1",
    ),
    (
        "overlays/vault",
        "PodDisruptionBudget",
        "coffer-injector",
        "policy/v1",
    ),
    (
        "overlays/tokenreview",
        "PodDisruptionBudget",
        "coffer-broker",
        "policy/v1",
    ),
    (
        "overlays/tokenreview",
        "PodDisruptionBudget",
        "coffer-injector",
        "policy/v1",
    ),
    (
        "overlays/dev",
        "PodDisruptionBudget",
        "coffer-broker",
        "policy/v1",
    ),
    (
        "overlays/dev",
        "PodDisruptionBudget",
        "coffer-injector",
        "policy/v1",
    ),
    // gRPC probes are 1.24+.
    ("overlays/vault", "Deployment", "coffer-broker", "grpc"),
    (
        "overlays/tokenreview",
        "Deployment",
        "coffer-broker",
        "grpc",
    ),
    ("overlays/dev", "Deployment", "coffer-broker", "grpc"),
    // A native sidecar (an init container with restartPolicy: Always, and
    // its probes) is 1.28+.
    ("example/native", "Deployment", "web", "restartPolicy"),
];

/// One object through `kubectl apply --dry-run=server`: the error, if any.
fn dry_run(cluster: &ApiServer, object: &Value) -> Option<String> {
    let output = cluster.kubectl_with_input(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&object.to_string()),
    );
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn every_overlay_and_example_passes_a_server_dry_run_but_for_features_after_1_20() {
    let cluster = ApiServer::shared();
    // A dry run creates nothing, so the namespaces its objects live in are
    // created for real first.
    for namespace in ["coffer", "shop"] {
        cluster.create_namespace(namespace);
    }
    let mut refused = Vec::new();
    let mut unexpected = Vec::new();
    for kustomization in deploy::KUSTOMIZATIONS {
        for object in deploy::objects(kustomization) {
            let kind = object["kind"].as_str().unwrap().to_string();
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let expected = REFUSED_BY_1_20
                .iter()
                .find(|(k, kd, n, _)| k == kustomization && *kd == kind && *n == name);
            match (dry_run(&cluster, &object), expected) {
                (None, None) => {}
                (Some(error), Some((_, _, _, because))) => {
                    assert!(
                        error.contains(because),
                        "{kustomization} {kind}/{name} refused, but not for {because}: {error}"
                    );
                    eprintln!(
                        "{kustomization} {kind}/{name}, as expected on 1.20: {}",
                        error.trim()
                    );
                    refused.push((kustomization.to_string(), kind, name));
                }
                (Some(error), None) => {
                    unexpected.push(format!("{kustomization} {kind}/{name}: {error}"));
                }
                (None, Some(_)) => unexpected.push(format!(
                    "{kustomization} {kind}/{name} was accepted: remove it from REFUSED_BY_1_20"
                )),
            }
        }
    }
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
    assert_eq!(refused.len(), REFUSED_BY_1_20.len(), "{refused:?}");
}

/// `kubectl auth can-i VERB RESOURCE --as system:serviceaccount:NS:SA`.
fn can_i(cluster: &ApiServer, service_account: &str, verb: &str, resource: &str) -> bool {
    let user = format!("system:serviceaccount:coffer:{service_account}");
    let output = cluster.kubectl(&["auth", "can-i", verb, resource, "--as", &user, "-A"]);
    match String::from_utf8_lossy(&output.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other} {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The RBAC objects of a kustomization (applied for real).
fn rbac(kustomization: &str) -> Vec<Value> {
    deploy::objects(kustomization)
        .into_iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "Role"
                        | "RoleBinding"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                )
            )
        })
        .collect()
}

#[test]
fn each_overlay_grants_its_service_accounts_what_they_need_and_nothing_more() {
    let cluster = ApiServer::shared();
    // Every overlay lives in namespace coffer: one at a time, removed after.
    for (kustomization, reviews_tokens) in [
        ("overlays/vault", false),
        ("overlays/dev", false),
        ("overlays/tokenreview", true),
    ] {
        let objects = rbac(kustomization);
        let stream: Vec<String> = objects.iter().map(Value::to_string).collect();
        cluster.create_namespace("coffer");
        for object in &stream {
            cluster.apply(object);
        }

        // The broker reads the issuer's discovery documents with its token.
        assert!(can_i(
            &cluster,
            "coffer-broker",
            "get",
            "/.well-known/openid-configuration"
        ));
        assert!(can_i(&cluster, "coffer-broker", "get", "/openid/v1/jwks"));
        // TokenReview only where the overlay authenticates by it.
        assert_eq!(
            can_i(
                &cluster,
                "coffer-broker",
                "create",
                "tokenreviews.authentication.k8s.io"
            ),
            reviews_tokens,
            "{kustomization}: tokenreviews"
        );
        // Never a Secret, a pod, or a token of another account.
        for sa in ["coffer-broker", "coffer-injector", "coffer-operator"] {
            for (verb, resource) in [
                ("get", "secrets"),
                ("list", "secrets"),
                ("create", "pods"),
                ("patch", "pods"),
                ("create", "serviceaccounts/token"),
                ("update", "mutatingwebhookconfigurations"),
            ] {
                assert!(
                    !can_i(&cluster, sa, verb, resource),
                    "{kustomization}: {sa} may {verb} {resource}"
                );
            }
        }

        for object in objects.iter().filter(|o| o["kind"] != "ServiceAccount") {
            let kind = object["kind"].as_str().unwrap();
            let name = object["metadata"]["name"].as_str().unwrap();
            cluster.kubectl_ok(&["delete", kind, name, "-n", "coffer", "--ignore-not-found"]);
        }
    }
}
