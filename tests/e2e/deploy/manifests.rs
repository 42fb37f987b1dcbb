//! The shipped kustomizations render, validate strictly against a pinned
//! Kubernetes schema (kubernetes-validate), and pass checkov with 0 failed
//! checks; every skip is annotated inline with its reason. The validators
//! are pinned in scripts/install-test-deps.

use coffer_tests::deploy::{KUSTOMIZATIONS, kubernetes_validate, objects, render};

fn rendered_file(kustomization: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir
        .path()
        .join(format!("{}.yaml", kustomization.replace('/', "-")));
    std::fs::write(&file, render(kustomization)).unwrap();
    (dir, file)
}

#[test]
fn every_kustomization_validates_strictly() {
    for kustomization in KUSTOMIZATIONS {
        let (_dir, file) = rendered_file(kustomization);
        kubernetes_validate(&file);
    }
}

/// Runs checkov on the rendered kustomization; returns (passed, failed,
/// skipped) and panics with the failed checks if any.
fn checkov(kustomization: &str) -> (u64, u64, u64) {
    let (_dir, file) = rendered_file(kustomization);
    let report = coffer_tests::deploy::checkov(&file);
    let summary = &report["summary"];
    let count = |k: &str| summary[k].as_u64().unwrap();
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} ({})", c["check_id"], c["resource"], c["check_name"]))
        .collect();
    assert!(
        failed.is_empty(),
        "checkov failed on {kustomization}:\n{}",
        failed.join("\n")
    );
    let counts = (count("passed"), count("failed"), count("skipped"));
    eprintln!(
        "checkov {kustomization}: passed {}, failed {}, skipped {}",
        counts.0, counts.1, counts.2
    );
    counts
}

#[test]
fn checkov_passes_the_vault_overlay() {
    let (passed, failed, _) = checkov("overlays/vault");
    assert!(passed > 50 && failed == 0);
}

#[test]
fn checkov_passes_the_tokenreview_overlay() {
    let (passed, failed, _) = checkov("overlays/tokenreview");
    assert!(passed > 50 && failed == 0);
}

#[test]
fn checkov_passes_the_dev_overlay() {
    let (passed, failed, _) = checkov("overlays/dev");
    assert!(passed > 50 && failed == 0);
}

#[test]
fn checkov_passes_the_example_app() {
    let (passed, failed, _) = checkov("example/native");
    assert!(passed > 50 && failed == 0);
}

#[test]
fn checkov_passes_the_init_mode_example() {
    let (passed, failed, _) = checkov("example/init-mode");
    assert!(passed > 50 && failed == 0);
}

#[test]
fn every_checkov_skip_states_a_reason() {
    for kustomization in KUSTOMIZATIONS {
        for object in objects(kustomization) {
            let Some(annotations) = object["metadata"]["annotations"].as_object() else {
                continue;
            };
            for (key, value) in annotations {
                if !key.starts_with("checkov.io/skip") {
                    continue;
                }
                let value = value.as_str().unwrap();
                let (check, reason) = value.split_once('=').unwrap_or((value, ""));
                assert!(
                    check.starts_with("CKV_K8S_") && reason.trim().len() >= 20,
                    "{kustomization}: {key} must read CKV_K8S_NN=<reason>, got {value:?}"
                );
            }
        }
    }
}

#[test]
fn only_the_tokenreview_overlay_binds_auth_delegator() {
    for kustomization in KUSTOMIZATIONS {
        let binds = objects(kustomization).iter().any(|o| {
            o["kind"] == "ClusterRoleBinding" && o["roleRef"]["name"] == "system:auth-delegator"
        });
        assert_eq!(
            binds,
            *kustomization == "overlays/tokenreview",
            "{kustomization}"
        );
    }
}

#[test]
fn no_app_container_mounts_the_coffer_token() {
    for kustomization in ["example/native", "example/init-mode"] {
        let objects = objects(kustomization);
        let deployment = coffer_tests::deploy::find(&objects, "Deployment", "web");
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            let mounts = container["volumeMounts"].as_array().unwrap();
            assert!(
                mounts.iter().all(|m| m["name"] != "coffer-token"),
                "{kustomization}: container {} sees the coffer token",
                container["name"]
            );
        }
    }
}

/// `cofferctl policy check` against the shipped policy: (namespace,
/// service account, path, capability) → allowed?
fn shipped_policy_allows(who: (&str, &str), path: &str, capability: &str) -> bool {
    let objects = objects("overlays/vault");
    let policy =
        coffer_tests::deploy::find(&objects, "ConfigMap", "coffer-policy")["data"]["policy.yaml"]
            .as_str()
            .unwrap()
            .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy).unwrap();
    let (code, _) = coffer_tests::cofferctl([
        "policy".as_ref(),
        "check".as_ref(),
        "--policy".as_ref(),
        file.as_os_str(),
        "--namespace".as_ref(),
        who.0.as_ref(),
        "--service-account".as_ref(),
        who.1.as_ref(),
        "--path".as_ref(),
        path.as_ref(),
        "--capability".as_ref(),
        capability.as_ref(),
    ]);
    assert!(
        code == 0 || code == 1,
        "cofferctl policy check: exit {code}"
    );
    code == 0
}

#[test]
fn the_shipped_policy_has_an_operator_rule_and_stays_deny_by_default() {
    let operator = ("coffer", "coffer-operator");
    for capability in ["write", "rotate", "rollback", "list", "status"] {
        assert!(shipped_policy_allows(operator, "shop/web/db", capability));
    }
    assert!(shipped_policy_allows(
        ("shop", "web"),
        "shop/web/db",
        "watch"
    ));
    assert!(!shipped_policy_allows(
        ("shop", "web"),
        "shop/web/db",
        "write"
    ));
    assert!(!shipped_policy_allows(
        ("shop", "api"),
        "shop/web/db",
        "read"
    ));
}
