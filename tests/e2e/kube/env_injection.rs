//! `coffer.dev/env` through the real API server: the stored pod runs
//! `coffer-env` in front of the app's own command, its values still
//! references, hardened like every injection, and `kubernetes-validate`
//! accepts it; a container without a `command` is refused with the
//! injector's message asking for one.

use coffer_tests::{deploy, kube::ApiServer};
use serde_json::{Value, json};

use super::injector::{create, names, register_webhook, start_injector};

/// A pod of `shop/web` taking `DB_PASSWORD` from Coffer, with `annotations`.
fn pod(namespace: &str, name: &str, annotations: Value, command: bool) -> Value {
    let mut app = json!({
        "name": "app",
        "image": "example.invalid/web:1",
        "args": ["--port", "8080"],
        "env": [{"name": "DB_PASSWORD", "value": "coffer:shop/web/db#password"}],
        "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false},
    });
    if command {
        app["command"] = json!(["/app/server"]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "web", "coffer.dev/inject": "true"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
            "containers": [app],
        },
    })
}

#[test]
fn the_api_server_stores_a_pod_running_coffer_env_and_it_validates() {
    let cluster = ApiServer::shared();
    let injector = start_injector(&cluster);
    register_webhook(&cluster, &injector.url);
    let namespace = cluster.namespace("shop");
    cluster.service_account(&namespace, "web");

    let annotations = json!({"coffer.dev/env": "true", "coffer.dev/env-restart-on-change": "true"});
    let stored = create(&cluster, &pod(&namespace, "env-0", annotations, true))
        .unwrap_or_else(|e| panic!("{e}\n{}", injector.process.output()));
    let spec = &stored["spec"];
    // Environment variables alone: no sidecar, one init container.
    assert_eq!(names(&spec["containers"]), ["app"]);
    assert_eq!(names(&spec["initContainers"]), ["coffer-env-init"]);
    let app = &spec["containers"][0];
    assert_eq!(
        app["command"],
        json!([
            "/coffer/bin/coffer-env",
            "--restart-on-change",
            "--",
            "/app/server"
        ])
    );
    assert_eq!(app["args"], json!(["--port", "8080"]));
    assert_eq!(app["env"][0]["value"], "coffer:shop/web/db#password");
    let init = &spec["initContainers"][0];
    assert_eq!(init["securityContext"]["runAsUser"], 1000);
    assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    let bin = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "coffer-env-bin")
        .unwrap();
    assert_eq!(bin["emptyDir"]["medium"], "Memory");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, format!("{stored}\n")).unwrap();
    deploy::kubernetes_validate(&file);

    // With files too, in the cluster's `container` mode: the sidecar and
    // coffer-env side by side.
    let both = json!({"coffer.dev/env": "app", "coffer.dev/secret-db": "shop/web/db"});
    let stored = create(&cluster, &pod(&namespace, "both-0", both, true))
        .unwrap_or_else(|e| panic!("{e}\n{}", injector.process.output()));
    assert_eq!(
        names(&stored["spec"]["containers"]),
        ["coffer-sidecar", "app"]
    );
    assert_eq!(
        stored["spec"]["containers"][1]["command"][0],
        "/coffer/bin/coffer-env"
    );

    // No command: the webhook cannot know the image's entrypoint.
    let error = create(
        &cluster,
        &pod(
            &namespace,
            "nocmd-0",
            json!({"coffer.dev/env": "true"}),
            false,
        ),
    )
    .unwrap_err();
    assert!(error.contains("coffer-injector:"), "{error}");
    assert!(error.contains("coffer.dev/env-command-app"), "{error}");
}
