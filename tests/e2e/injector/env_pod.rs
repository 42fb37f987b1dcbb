//! `coffer.dev/env` through the real injector binary: the patched pod
//! passes kubernetes-validate (strict) and checkov, with and without files
//! in every sidecar mode; the app's values stay references; and after
//! injection what was added for `coffer-env` cannot change.

use coffer_tests::deploy::{checkov, kubernetes_validate};
use serde_json::{Value, json};

use crate::injector::common::{Injector, container, pod, refusal};

/// The shared hardened pod taking `DB_PASSWORD` from Coffer by reference.
fn env_pod(annotations: Value) -> Value {
    let mut annotations = annotations;
    annotations["coffer.dev/env"] = json!("true");
    annotations["checkov.io/skip1"] =
        json!("CKV_K8S_43=test images are named by tag; pin digests in real manifests");
    let mut pod = pod(annotations);
    let web = &mut pod["spec"]["containers"][0];
    web["command"] = json!(["/app/server"]);
    web["env"] = json!([{"name": "DB_PASSWORD", "value": "coffer:shop/db#password"}]);
    let probe = json!({"httpGet": {"path": "/healthz", "port": 8080}});
    web["readinessProbe"] = probe.clone();
    web["livenessProbe"] = probe;
    pod
}

/// The NetworkPolicy every pod should have (checkov's CKV2_K8S_6).
fn network_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}],
        },
    })
}

#[test]
fn env_pods_validate_and_pass_checkov_alone_and_beside_the_sidecar() {
    let injector = Injector::start();
    let cases = [
        ("env alone", json!({})),
        (
            "native",
            json!({"coffer.dev/secret-db": "shop/db#password", "coffer.dev/sidecar-mode": "native"}),
        ),
        (
            "container",
            json!({"coffer.dev/secret-db": "shop/db#password", "coffer.dev/sidecar-mode": "container"}),
        ),
        (
            "init-only",
            json!({"coffer.dev/secret-db": "shop/db#password", "coffer.dev/sidecar-mode": "init-only"}),
        ),
    ];
    // Every case in one file: one validator run and one checkov run.
    let mut documents = vec![network_policy()];
    for (i, (case, annotations)) in cases.into_iter().enumerate() {
        let mut patched = injector.injected(&env_pod(annotations));
        let web = container(&patched, "web");
        assert_eq!(
            web["command"],
            json!(["/coffer/bin/coffer-env", "--", "/app/server"]),
            "{case}"
        );
        assert_eq!(web["env"][0]["value"], "coffer:shop/db#password", "{case}");
        let init = container(&patched, "coffer-env-init");
        assert_eq!(init["securityContext"]["runAsUser"], 10001, "{case}");
        patched["metadata"]["name"] = json!(format!("web-{i}"));
        documents.push(patched);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pods.yaml");
    let text: Vec<String> = documents.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n---\n") + "\n").unwrap();
    kubernetes_validate(&file);
    let report = checkov(&file);
    assert_eq!(
        report["summary"]["failed"], 0,
        "{:#}",
        report["results"]["failed_checks"]
    );
    assert!(
        report["summary"]["passed"].as_u64().unwrap() > 80,
        "{report:#}"
    );
}

#[test]
fn what_was_added_for_coffer_env_cannot_change_after_injection() {
    let injector = Injector::start();
    let old = injector.injected(&env_pod(json!({})));
    let mut new = old.clone();
    let init = new["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"] == "coffer-env-init")
        .unwrap();
    init["image"] = json!("evil.example/coffer-env:1");
    let message = refusal(&injector.update(&old, &new));
    assert!(message.contains("coffer-env-init"), "{message}");

    let mut debug = old.clone();
    debug["spec"]["ephemeralContainers"] = json!([{
        "name": "debug", "image": "busybox",
        "volumeMounts": [{"name": "coffer-env-bin", "mountPath": "/x"}],
    }]);
    let message = refusal(&injector.update(&old, &debug));
    assert!(message.contains("coffer-env-bin"), "{message}");
}
