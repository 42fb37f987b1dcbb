//! After injection the real `coffer-injector` guards what it added (issue
//! #22): the sidecar re-reads `coffer.dev/sidecar-config` when it restarts,
//! so anyone allowed to `patch pods` could point it at another broker or
//! let it write to disk. An UPDATE of an injected pod that changes a
//! `coffer.dev/` annotation or label, or an added container or volume, is
//! refused; any other update is allowed. An ephemeral container (the
//! `pods/ephemeralcontainers` subresource) may not mount a volume the
//! injector added (the token above all) nor join the sidecar's processes.
//! The shipped webhook sends both kinds of request.

use crate::injector::common as injector_common;

use coffer_tests::deploy;
use injector_common::{Injector, opted_in, refusal, review};
use serde_json::{Value, json};

/// An injected pod as stored, and the injector that injected it.
fn injected() -> (Injector, Value) {
    let injector = Injector::start();
    let pod = injector.injected(&opted_in());
    assert_eq!(
        pod["metadata"]["annotations"]["coffer.dev/injected"],
        "true"
    );
    (injector, pod)
}

fn allowed_unchanged(response: &Value) {
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
}

#[test]
fn changing_the_sidecar_configuration_is_refused() {
    let (injector, old) = injected();
    let config = old["metadata"]["annotations"]["coffer.dev/sidecar-config"]
        .as_str()
        .unwrap();
    let hostile = config.replace(
        "https://coffer-broker.coffer.svc:8443",
        "https://evil.example:443",
    ) + "allowNonTmpfs: true\n";
    let mut new = old.clone();
    new["metadata"]["annotations"]["coffer.dev/sidecar-config"] = json!(hostile);
    let message = refusal(&injector.update(&old, &new));
    assert!(message.contains("coffer.dev/sidecar-config"), "{message}");
}

#[test]
fn adding_changing_or_removing_a_coffer_annotation_is_refused() {
    let (injector, old) = injected();
    let edits: [(&str, Option<&str>); 4] = [
        (
            "coffer.dev/action",
            Some("{command: [/bin/sh, -c, 'curl evil']}"),
        ),
        ("coffer.dev/secret-db", Some("shop/other#password")),
        ("coffer.dev/file-db", None),
        ("coffer.dev/injected", None),
    ];
    for (key, value) in edits {
        let mut new = old.clone();
        let annotations = new["metadata"]["annotations"].as_object_mut().unwrap();
        match value {
            Some(value) => annotations.insert(key.to_string(), json!(value)),
            None => annotations.remove(key),
        };
        let message = refusal(&injector.update(&old, &new));
        assert!(message.contains(key), "{key}: {message}");
    }
}

#[test]
fn removing_the_inject_label_is_refused() {
    // Without it, later updates would not reach the webhook at all.
    let (injector, old) = injected();
    let mut new = old.clone();
    new["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("coffer.dev/inject");
    let message = refusal(&injector.update(&old, &new));
    assert!(message.contains("coffer.dev/inject"), "{message}");
}

#[test]
fn changing_the_sidecar_image_is_refused() {
    let (injector, old) = injected();
    let mut new = old.clone();
    new["spec"]["initContainers"][0]["image"] = json!("evil.example/steal-token:1");
    let message = refusal(&injector.update(&old, &new));
    assert!(message.contains("coffer-sidecar"), "{message}");
}

#[test]
fn other_updates_of_an_injected_pod_are_allowed() {
    let (injector, old) = injected();
    let mut new = old.clone();
    new["metadata"]["labels"]["pod-template-hash"] = json!("7c9f8d");
    new["metadata"]["annotations"]["example.com/owner"] = json!("team-web");
    new["metadata"]["finalizers"] = json!([]);
    new["spec"]["containers"][0]["image"] = json!("example/web:1.1");
    allowed_unchanged(&injector.update(&old, &new));
}

#[test]
fn updates_of_a_pod_that_was_not_injected_are_allowed() {
    let injector = Injector::start();
    let old = opted_in();
    let mut new = old.clone();
    new["metadata"]["annotations"]["coffer.dev/file-db"] = json!("other");
    allowed_unchanged(&injector.update(&old, &new));
}

/// `pod` with an ephemeral container added through the subresource.
fn with_ephemeral(pod: &Value, container: Value) -> Value {
    let mut new = pod.clone();
    new["spec"]["ephemeralContainers"] = json!([container]);
    new
}

fn ephemeral_update(injector: &Injector, old: &Value, new: &Value) -> Value {
    injector.send(&review(
        "UPDATE",
        "shop",
        Some(new),
        Some(old),
        Some("ephemeralcontainers"),
    ))
}

#[test]
fn an_ephemeral_container_mounting_the_token_is_refused() {
    let (injector, old) = injected();
    for volume in ["coffer-token", "coffer-secrets"] {
        let new = with_ephemeral(
            &old,
            json!({
                "name": "debugger", "image": "busybox:1",
                "volumeMounts": [{"name": volume, "mountPath": "/mnt"}],
            }),
        );
        let message = refusal(&ephemeral_update(&injector, &old, &new));
        assert!(message.contains(volume), "{message}");
        assert!(message.contains("debugger"), "{message}");
    }
}

#[test]
fn an_ephemeral_container_joining_the_sidecars_processes_is_refused() {
    let (injector, old) = injected();
    let new = with_ephemeral(
        &old,
        json!({"name": "debugger", "image": "busybox:1", "targetContainerName": "coffer-sidecar"}),
    );
    let message = refusal(&ephemeral_update(&injector, &old, &new));
    assert!(message.contains("coffer-sidecar"), "{message}");
}

#[test]
fn an_ephemeral_container_of_the_app_is_allowed() {
    let (injector, old) = injected();
    let new = with_ephemeral(
        &old,
        json!({"name": "debugger", "image": "busybox:1", "targetContainerName": "web"}),
    );
    allowed_unchanged(&ephemeral_update(&injector, &old, &new));
}

#[test]
fn the_shipped_webhook_is_called_for_updates_and_ephemeral_containers() {
    for overlay in ["overlays/vault", "overlays/tokenreview", "overlays/dev"] {
        let objects = deploy::objects(overlay);
        let webhook = deploy::find(&objects, "MutatingWebhookConfiguration", "coffer-injector");
        for hook in webhook["webhooks"].as_array().unwrap() {
            assert_eq!(hook["failurePolicy"], "Fail", "{overlay}");
            assert_eq!(
                hook["objectSelector"]["matchLabels"]["coffer.dev/inject"], "true",
                "{overlay}: the webhook must stay limited to opted-in pods"
            );
            let rules = hook["rules"].as_array().unwrap();
            let covers = |operation: &str, resource: &str| {
                rules.iter().any(|rule| {
                    rule["operations"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(operation))
                        && rule["resources"]
                            .as_array()
                            .unwrap()
                            .contains(&json!(resource))
                })
            };
            for (operation, resource) in [
                ("CREATE", "pods"),
                ("UPDATE", "pods"),
                ("UPDATE", "pods/ephemeralcontainers"),
            ] {
                assert!(
                    covers(operation, resource),
                    "{overlay}: {operation} {resource}"
                );
            }
        }
    }
}
