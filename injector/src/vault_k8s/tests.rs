//! Every vault-k8s annotation through the translation with the outcome its
//! row documents, the values vault-k8s's own annotations_test.go uses, and
//! pods through the injector's patch.

use serde_json::{Value, json};

use super::{
    Outcome,
    rules::{ROWS, Rule, Scope},
    translate,
};
use crate::{
    annotations::AnnotationError,
    mode::SidecarMode,
    patch::{Injection, PatchError, patch, test_injection},
    pod::Pod,
};

const SECRET: (&str, &str) = (
    "vault.hashicorp.com/agent-inject-secret-db",
    "secret/data/shop/db",
);

fn outcome(pairs: &[(&str, &str)], annotation: &str) -> Outcome {
    let t = translate(pairs.iter().copied(), true);
    t.outcomes
        .get(annotation)
        .cloned()
        .unwrap_or_else(|| panic!("no outcome for {annotation}: {t:?}"))
}

fn coffer(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    let t = translate(pairs.iter().copied(), true);
    assert_eq!(t.refusals().count(), 0, "{t:?}");
    t.annotations
}

/// A value each annotation is commonly given.
fn sample(name: &str) -> &'static str {
    match name {
        "agent-inject-secret" => "secret/data/shop/db",
        "agent-inject-file" => "db.txt",
        "agent-inject-perms" => "0440",
        "agent-inject-template" => {
            "{{ with secret \"secret/data/shop/db\" }}{{ .Data.data.password }}{{ end }}"
        }
        "agent-inject-containers" => "web",
        "agent-inject-default-template" => "json",
        "agent-inject-template-file" => "/etc/config.tmpl",
        "agent-template-left-delim" => "[[",
        "agent-template-right-delim" => "]]",
        "agent-inject-command" => "pkill -HUP nginx",
        "agent-run-as-user" | "agent-run-as-group" => "1000",
        "agent-limits-cpu" | "agent-requests-cpu" => "250m",
        "agent-limits-mem"
        | "agent-requests-mem"
        | "agent-limits-ephemeral"
        | "agent-requests-ephemeral" => "64Mi",
        "secret-volume-path" => "/vault/secrets",
        "agent-configmap" => "my-configmap",
        "agent-json-patch" | "agent-init-json-patch" => "[]",
        "role" => "web",
        _ => "true",
    }
}

#[test]
fn every_annotation_gets_the_outcome_its_row_documents() {
    for row in ROWS {
        let key = match row.scope {
            Scope::Pod => format!("vault.hashicorp.com/{}", row.name),
            Scope::Secret => format!("vault.hashicorp.com/{}-db", row.name),
            Scope::Prefix => format!("vault.hashicorp.com/{}-foobar", row.name),
        };
        let mut pairs = vec![SECRET, (key.as_str(), sample(row.name))];
        if row.name == "agent-template-left-delim" || row.name == "agent-template-right-delim" {
            pairs.push((
                "vault.hashicorp.com/agent-inject-template-db",
                "[[ with secret \"secret/data/shop/db\" ]][[ .Data.data.password ]][[ end ]]",
            ));
            pairs.push(("vault.hashicorp.com/agent-template-left-delim-db", "[["));
            pairs.push(("vault.hashicorp.com/agent-template-right-delim-db", "]]"));
        }
        let got = outcome(&pairs, &key);
        let fits = matches!(
            (row.rule, &got),
            (
                Rule::Translated(_),
                Outcome::Translated(_) | Outcome::Converted(_)
            ) | (Rule::Ignored(_), Outcome::Ignored(_))
                | (Rule::Refused(_), Outcome::Refused(_))
        );
        assert!(fits, "{key}: documented {:?}, got {got:?}", row.rule);
    }
}

#[test]
fn vault_k8s_test_values_get_the_documented_outcomes() {
    // (annotation, value, the outcome's kind) from annotations_test.go.
    let refused = |o: &Outcome| matches!(o, Outcome::Refused(_));
    let ignored = |o: &Outcome| matches!(o, Outcome::Ignored(_));
    let translated = |o: &Outcome| matches!(o, Outcome::Translated(_) | Outcome::Converted(_));
    type Check = fn(&Outcome) -> bool;
    let cases: &[(&str, &str, Check)] = &[
        ("agent-inject", "tRuE", refused), // Go's ParseBool refuses it; so does vault-k8s
        ("agent-inject", "t", translated),
        ("agent-inject", "1", translated),
        ("agent-inject", "TRUE", translated),
        ("agent-pre-populate-only", "", refused),
        ("agent-pre-populate-only", "fAlSe", refused),
        ("agent-pre-populate-only", "FALSE", translated),
        ("agent-pre-populate", "0", ignored),
        ("agent-cache-enable", "tRuE", ignored),
        ("agent-revoke-on-shutdown", "1", ignored),
        ("agent-revoke-grace", "-1", ignored),
        ("agent-inject-default-template", "JSON", translated),
        ("agent-inject-default-template", "MAP", translated),
        ("agent-inject-default-template", "jsn", refused),
        ("agent-inject-default-template", "foobar", refused),
        ("agent-inject-default-template", "", refused),
        ("agent-inject-containers", "foo1,foo2", translated),
        ("auth-min-backoff", "x", ignored),
        (
            "auth-config-token-path",
            "serviceaccount/somewhere-else/token",
            ignored,
        ),
        ("agent-telemetry-prometheus_retention_time", "5s", ignored),
        ("template-lease-renewal-threshold", "one-third", ignored),
        (
            "agent-disable-keep-alives",
            "auto-auth,caching,templating",
            ignored,
        ),
        ("agent-inject-TEMPLATE-foobar", "foobarTemplate", ignored),
        ("agent-inject-templat-foobar", "foobarTemplate", ignored),
        ("role", "backwardscompat", ignored),
        ("agent-inject-file-notcorresponding", "x", ignored),
        (
            "agent-inject-file-db",
            "/some/path/foobar_simple_name",
            refused,
        ),
        (
            "agent-inject-file-db",
            "this_is_very_long_and/would_fail_in_kubernetes/if_in_annotation",
            refused,
        ),
        ("agent-inject-file-db", "foobar_simple_name", translated),
        ("agent-inject-perms-db", "0600", translated),
        ("agent-inject-command-db", "pkill -HUP nginx", translated),
        ("agent-inject-template-file-db", "/etc/config.tmpl", refused),
        ("error-on-missing-key-db", "True", translated),
        ("error-on-missing-key-db", "false", translated),
        ("error-on-missing-key-db", "unknown", refused),
        ("agent-inject-token", "true", refused),
        ("agent-inject-token", "false", ignored),
        ("agent-enable-quit", "true", refused),
        ("agent-run-as-user", "0", refused),
        ("agent-limits-cpu", "lots", refused),
    ];
    let foo =
        json!({"containers": [{"name": "foo1", "image": "f"}, {"name": "foo2", "image": "f"}]});
    for (name, value, check) in cases {
        let key = format!("vault.hashicorp.com/{name}");
        let got = outcome(&[SECRET, (&key, value)], &key);
        assert!(check(&got), "{key}: {value:?} → {got:?}");
        // And through the injector: refused naming the annotation, or
        // admitted with a warning naming each ignored one.
        let pod = pod_with(
            json!({SECRET.0: SECRET.1, key.as_str(): value}),
            foo.clone(),
        );
        match (patched(&pod, &test_injection()), &got) {
            (Err(e), Outcome::Refused(_)) => assert!(e.to_string().contains(&key), "{e}"),
            (Ok((_, warnings)), Outcome::Ignored(_)) => {
                assert!(
                    warnings
                        .iter()
                        .any(|w| w.starts_with(&format!("{key} is ignored: "))),
                    "{warnings:?}"
                )
            }
            (Ok(_), Outcome::Translated(_) | Outcome::Converted(_)) => {}
            (other, _) => panic!(
                "{key}: {value:?}: {got:?} but the injector: {:?}",
                other.map(|(_, w)| w)
            ),
        }
    }
}

#[test]
fn secret_names_are_lower_cased_unless_preserved() {
    let pairs = [("vault.hashicorp.com/agent-inject-secret-FOOBAR", "test1")];
    let c = coffer(&pairs);
    assert_eq!(c["coffer.dev/secret-foobar"], "test1");
    let mut keep = pairs.to_vec();
    keep.push(("vault.hashicorp.com/preserve-secret-case-FOOBAR", "true"));
    assert!(coffer(&keep).contains_key("coffer.dev/secret-FOOBAR"));
    let mut pod_wide = pairs.to_vec();
    pod_wide.push(("vault.hashicorp.com/preserve-secret-case", "true"));
    assert!(coffer(&pod_wide).contains_key("coffer.dev/secret-FOOBAR"));
}

#[test]
fn an_empty_template_is_vault_k8s_default_template() {
    let c = coffer(&[
        (
            "vault.hashicorp.com/agent-inject-secret-barfoo",
            "database/creds/app",
        ),
        ("vault.hashicorp.com/agent-inject-template-barfoo", ""),
    ]);
    assert_eq!(
        c["coffer.dev/template-barfoo"],
        crate::gotemplate::default_template("database/creds/app", false).0
    );
    let t = translate([SECRET], true);
    assert!(
        t.warnings().iter().any(|w| w.contains("metadata")),
        "{:?}",
        t.warnings()
    );
}

#[test]
fn a_template_without_a_secret_annotation_takes_its_path_from_with_secret() {
    let c = coffer(&[(
        "vault.hashicorp.com/agent-inject-template-only-template",
        "{{ with secret \"secret/data/shop/web\" }}{{ .Data.data.k }}{{ end }}",
    )]);
    assert_eq!(c["coffer.dev/secret-only-template"], "shop/web");
    let o = outcome(
        &[(
            "vault.hashicorp.com/agent-inject-template-only-template",
            "onlyTemplate",
        )],
        "vault.hashicorp.com/agent-inject-template-only-template",
    );
    assert!(
        matches!(o, Outcome::Refused(ref why) if why.contains("no secret path")),
        "{o:?}"
    );
}

#[test]
fn a_template_reading_another_path_than_its_secret_is_refused() {
    let o = outcome(
        &[
            SECRET,
            (
                "vault.hashicorp.com/agent-inject-template-db",
                "{{ with secret \"secret/data/other\" }}{{ end }}",
            ),
        ],
        "vault.hashicorp.com/agent-inject-template-db",
    );
    assert!(matches!(o, Outcome::Refused(_)), "{o:?}");
}

#[test]
fn a_vault_annotation_disagreeing_with_its_coffer_counterpart_is_refused() {
    let pairs = [
        SECRET,
        ("vault.hashicorp.com/agent-inject-perms-db", "0440"),
        ("coffer.dev/mode-db", "0400"),
    ];
    let o = outcome(&pairs, "vault.hashicorp.com/agent-inject-perms-db");
    assert!(
        matches!(o, Outcome::Refused(ref why) if why.contains("coffer.dev/mode-db")),
        "{o:?}"
    );
    let agree = [
        SECRET,
        ("vault.hashicorp.com/agent-inject-perms-db", "0440"),
        ("coffer.dev/mode-db", "0440"),
    ];
    assert!(matches!(
        outcome(&agree, "vault.hashicorp.com/agent-inject-perms-db"),
        Outcome::Translated(_)
    ));
    let path = [SECRET, ("coffer.dev/secret-db", "shop/other")];
    assert!(matches!(outcome(&path, SECRET.0), Outcome::Refused(_)));
    let inject = [SECRET, ("vault.hashicorp.com/agent-inject", "false")];
    assert!(matches!(
        outcome(&inject, "vault.hashicorp.com/agent-inject"),
        Outcome::Refused(_)
    ));
}

fn pod_with(annotations: Value, spec: Value) -> Value {
    json!({
        "metadata": {"name": "web", "labels": {"coffer.dev/inject": "true"}, "annotations": annotations},
        "spec": spec,
    })
}

fn patched(pod: &Value, injection: &Injection) -> Result<(Value, Vec<String>), PatchError> {
    let text = pod.to_string();
    let patch = patch(&Pod::parse(&text).unwrap(), injection)?.expect("injected");
    let mut doc = pod.clone();
    for op in &patch.ops {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        match doc.pointer_mut(parent).unwrap() {
            Value::Object(map) => {
                map.insert(last, op["value"].clone());
            }
            Value::Array(items) if last == "-" => items.push(op["value"].clone()),
            Value::Array(items) => items.insert(last.parse().unwrap(), op["value"].clone()),
            other => panic!("cannot add into {other}"),
        }
    }
    Ok((doc, patch.warnings))
}

fn two_containers() -> Value {
    json!({"containers": [{"name": "web", "image": "w"}, {"name": "nginx", "image": "n"}]})
}

#[test]
fn the_injector_applies_paths_containers_users_and_process_namespace() {
    let pod = pod_with(
        json!({
            "vault.hashicorp.com/agent-inject": "true",
            "vault.hashicorp.com/role": "web",
            "vault.hashicorp.com/agent-inject-secret-db": "secret/data/shop/db",
            "vault.hashicorp.com/agent-inject-command-db": "pkill -HUP nginx",
            "vault.hashicorp.com/secret-volume-path": "/vault/secrets",
            "vault.hashicorp.com/secret-volume-path-db": "/etc/db",
            "vault.hashicorp.com/agent-inject-containers": "nginx",
            "vault.hashicorp.com/agent-run-as-user": "1000",
            "vault.hashicorp.com/agent-run-as-group": "3000",
            "vault.hashicorp.com/agent-share-process-namespace": "true",
        }),
        two_containers(),
    );
    let (doc, warnings) = patched(&pod, &test_injection()).unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("vault.hashicorp.com/role is ignored"),
        "{warnings:?}"
    );
    assert!(warnings[1].contains("metadata"), "{warnings:?}");
    assert!(
        doc["spec"]["containers"][0].get("volumeMounts").is_none(),
        "web is not in agent-inject-containers"
    );
    let mounts: Vec<&str> = doc["spec"]["containers"][1]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(mounts, ["/vault/secrets", "/etc/db"]);
    assert_eq!(doc["spec"]["shareProcessNamespace"], true);
    let sidecar = &doc["spec"]["initContainers"][0];
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1000);
    assert_eq!(sidecar["securityContext"]["runAsGroup"], 3000);
    let config: Value = serde_norway::from_str(
        doc["metadata"]["annotations"]["coffer.dev/sidecar-config"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["secrets"][0]["action"],
        json!({"signal": "HUP", "processName": "nginx"})
    );
    assert_eq!(config["secrets"][0]["path"], "shop/db");
    assert_eq!(config["secrets"][0]["file"], "db");
}

#[test]
fn pre_populate_only_is_the_init_only_mode() {
    let pod = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-pre-populate-only": "true"}),
        two_containers(),
    );
    let injection = Injection {
        mode: SidecarMode::Container,
        ..test_injection()
    };
    let (doc, _) = patched(&pod, &injection).unwrap();
    assert_eq!(doc["spec"]["initContainers"].as_array().unwrap().len(), 1);
    assert!(
        doc["spec"]["initContainers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("--once"))
    );
    assert!(
        doc["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "coffer-sidecar")
    );
}

#[test]
fn resources_are_set_and_a_guaranteed_pod_stays_guaranteed() {
    let resources =
        json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}});
    let spec = json!({"containers": [{"name": "web", "image": "w", "resources": resources}]});
    let pod = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-limits-cpu": "250m", "vault.hashicorp.com/agent-limits-mem": "64Mi", "vault.hashicorp.com/agent-requests-cpu": "50m"}),
        spec,
    );
    let (doc, _) = patched(&pod, &test_injection()).unwrap();
    let sidecar = &doc["spec"]["initContainers"][0]["resources"];
    assert_eq!(sidecar["limits"], json!({"cpu": "250m", "memory": "64Mi"}));
    assert_eq!(
        sidecar["requests"], sidecar["limits"],
        "Guaranteed: requests = limits"
    );
    let burstable = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-requests-cpu": "50m"}),
        two_containers(),
    );
    let (doc, _) = patched(&burstable, &test_injection()).unwrap();
    assert_eq!(
        doc["spec"]["initContainers"][0]["resources"]["requests"]["cpu"],
        "50m"
    );
}

#[test]
fn refusals_name_the_annotation_and_what_to_write() {
    let pod = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-configmap": "my-configmap"}),
        two_containers(),
    );
    let e = patched(&pod, &test_injection()).unwrap_err();
    let PatchError::Annotations(AnnotationError::VaultK8s(refused)) = &e else {
        panic!("{e}")
    };
    assert_eq!(refused[0].0, "vault.hashicorp.com/agent-configmap");
    assert!(e.to_string().contains("coffer.dev/template-<name>"), "{e}");
    let missing = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-inject-containers": "nope"}),
        two_containers(),
    );
    assert!(
        patched(&missing, &test_injection())
            .unwrap_err()
            .to_string()
            .contains("\"nope\"")
    );
}

#[test]
fn a_template_that_cannot_render_names_the_vault_annotation() {
    let pod = pod_with(
        json!({SECRET.0: SECRET.1, "vault.hashicorp.com/agent-inject-template-db": "{{ with secret \"secret/data/shop/db\" }}{{ .Data.data.a | base64Decode | toJSON }}{{ end }}"}),
        two_containers(),
    );
    // Renders with placeholders (b64decode of "0" fails for the value only).
    assert!(patched(&pod, &test_injection()).is_ok());
}

#[test]
fn the_admission_response_warns_of_each_ignored_annotation() {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "object": pod_with(json!({
                "vault.hashicorp.com/agent-inject-secret-db": "database/creds/app",
                "vault.hashicorp.com/role": "web",
                "vault.hashicorp.com/agent-cache-enable": "true",
            }), two_containers()),
        },
    });
    let answer = crate::review::review(body.to_string().as_bytes(), &test_injection()).unwrap();
    let warnings: Vec<&str> = answer["response"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("vault.hashicorp.com/agent-cache-enable is ignored: "));
    assert!(warnings[1].starts_with("vault.hashicorp.com/role is ignored: "));
    assert_eq!(answer["response"]["allowed"], true);
}
