//! The real `coffer-injector` binary, fed real AdmissionReview v1 JSON over
//! HTTPS: the patched pod validates (kubernetes-validate, strict) and passes
//! checkov in every sidecar mode, and outside `native` also against the
//! oldest schema the validator ships (no field added since); the generated
//! sidecar configuration is loaded by the real sidecar, run with the injected
//! init container's own arguments; pods in excluded namespaces are left
//! alone; and invalid pods are refused with a clear message. (One test per
//! annotation and per refusal of the annotation parser: the unit tests in
//! injector/src/annotations.rs; the patch of each mode in detail:
//! injector/src/patch.rs.)

use crate::injector::common as injector_common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use coffer_tests::{
    BrokerProcess, Key, Process,
    deploy::{checkov, https_request, kubernetes_validate, venv_tool},
    mint,
};
use injector_common::{Injector, apply, review};
use serde_json::{Value, json};

const CANARY: &str = "canary-injected-7d2a";
/// The oldest Kubernetes whose schema kubernetes-validate ships. Validated
/// strictly, it refuses any field added since, `restartPolicy` on an init
/// container (1.28) among them. (Older clusters themselves: the tests
/// against a real kube-apiserver.)
const OLDEST_SCHEMA: &str = "1.25.0";
const MODES: [&str; 3] = ["native", "container", "init-only"];

/// Sends `pod` in a CREATE review from `namespace`; the review's response.
fn review_in(injector: &Injector, namespace: &str, pod: &Value) -> Value {
    injector.send(&review("CREATE", namespace, Some(pod), None, None))
}

/// A hardened pod as a ReplicaSet would create it, opted in: the shared
/// one named by `generateName`, with probes on its port instead of a name.
fn pod(annotations: Value) -> Value {
    let mut pod = injector_common::pod(annotations);
    let metadata = pod["metadata"].as_object_mut().unwrap();
    metadata.remove("name");
    metadata.insert("generateName".into(), json!("web-6b7f9c-"));
    let container = pod["spec"]["containers"][0].as_object_mut().unwrap();
    container.remove("ports");
    let probe = json!({"httpGet": {"path": "/healthz", "port": 8080}});
    container.insert("readinessProbe".into(), probe.clone());
    container.insert("livenessProbe".into(), probe);
    pod
}

fn opted_in() -> Value {
    pod(json!({
        "checkov.io/skip1": "CKV_K8S_43=test images are named by tag; pin digests in real manifests",
        "coffer.dev/secret-db": "shop/db#password",
        "coffer.dev/file-db": "db-password",
        "coffer.dev/mode-db": "0400",
    }))
}

/// [`opted_in`] asking for sidecar `mode` by annotation.
fn opted_in_as(mode: &str) -> Value {
    let mut pod = opted_in();
    pod["metadata"]["annotations"]["coffer.dev/sidecar-mode"] = json!(mode);
    pod
}

fn containers<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    pod["spec"][field].as_array().map_or(&[], Vec::as_slice)
}

fn names(pod: &Value, field: &str) -> Vec<String> {
    containers(pod, field)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn has_arg(container: &Value, arg: &str) -> bool {
    container["args"].as_array().unwrap().contains(&json!(arg))
}

fn has_probe(container: &Value) -> bool {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .any(|probe| container.get(*probe).is_some())
}

/// Strict validation against Kubernetes `version`: the validator's report
/// when it refuses the file.
fn validate_against(file: &Path, version: &str) -> Result<(), String> {
    let output = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", version])
        .arg(file)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Writes `pod` to a file in `dir`.
fn write_pod(dir: &Path, pod: &Value) -> PathBuf {
    let file = dir.join("pod.yaml");
    std::fs::write(&file, format!("{pod}\n")).unwrap();
    file
}

#[test]
fn the_patched_pod_validates_and_passes_checkov_in_every_mode() {
    let injector = Injector::start();
    // The NetworkPolicy every pod should have (checkov's CKV2_K8S_6).
    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}],
        },
    });
    for mode in MODES {
        let pod = opted_in_as(mode);
        let patched = apply(pod.clone(), &injector.create(&pod));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pod.yaml");
        std::fs::write(&file, format!("{patched}\n---\n{network_policy}\n")).unwrap();
        kubernetes_validate(&file);
        let report = checkov(&file);
        assert_eq!(
            report["summary"]["failed"], 0,
            "{mode}: {:#}",
            report["results"]["failed_checks"]
        );
        assert!(report["summary"]["passed"].as_u64().unwrap() > 20, "{mode}");
    }
}

#[test]
fn outside_native_mode_the_patched_pod_validates_on_the_oldest_schema() {
    let injector = Injector::start();
    for mode in ["container", "init-only"] {
        let pod = opted_in_as(mode);
        let patched = apply(pod.clone(), &injector.create(&pod));
        let dir = tempfile::tempdir().unwrap();
        let file = write_pod(dir.path(), &patched);
        if let Err(report) = validate_against(&file, OLDEST_SCHEMA) {
            panic!("{mode}: does not validate against Kubernetes {OLDEST_SCHEMA}:\n{report}");
        }
    }
}

#[test]
fn the_native_pod_does_not_validate_before_native_sidecars() {
    // What makes the test above worth something: the oldest schema refuses
    // the native sidecar's restartPolicy.
    let injector = Injector::start();
    let patched = apply(opted_in(), &injector.create(&opted_in()));
    let dir = tempfile::tempdir().unwrap();
    let file = write_pod(dir.path(), &patched);
    let report = validate_against(&file, OLDEST_SCHEMA).unwrap_err();
    assert!(report.contains("restartPolicy"), "{report}");
}

#[test]
fn the_sidecar_is_a_native_sidecar_and_only_it_sees_the_token() {
    let injector = Injector::start();
    let patched = apply(opted_in(), &injector.create(&opted_in()));
    let spec = &patched["spec"];
    let sidecar = &spec["initContainers"][0];
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(sidecar["securityContext"]["runAsUser"], 10001);
    let mounts = |c: &Value| -> Vec<String> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(mounts(sidecar).contains(&"coffer-token".to_string()));
    assert_eq!(mounts(&spec["containers"][0]), ["coffer-secrets"]);
    let volumes = spec["volumes"].as_array().unwrap();
    let secrets = volumes
        .iter()
        .find(|v| v["name"] == "coffer-secrets")
        .unwrap();
    assert_eq!(secrets["emptyDir"]["medium"], "Memory");
    let token = volumes
        .iter()
        .find(|v| v["name"] == "coffer-token")
        .unwrap();
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "coffer"
    );
    assert_eq!(patched["metadata"]["labels"]["coffer.dev/client"], "true");
}

#[test]
fn container_mode_runs_the_sidecar_as_the_first_container_after_a_once_init_container() {
    let injector = Injector::start_with(&["--sidecar-mode=container"]);
    let patched = apply(opted_in(), &injector.create(&opted_in()));
    assert_eq!(names(&patched, "initContainers"), ["coffer-sidecar-init"]);
    assert_eq!(names(&patched, "containers"), ["coffer-sidecar", "web"]);
    let init = &containers(&patched, "initContainers")[0];
    assert!(has_arg(init, "--once"));
    assert!(init.get("restartPolicy").is_none(), "{init}");
    assert!(!has_probe(init), "{init}");
    let sidecar = &containers(&patched, "containers")[0];
    assert!(!has_arg(sidecar, "--once"));
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(sidecar.get("restartPolicy").is_none(), "{sidecar}");
    // Both run as the app, and only they see the token.
    for container in [init, sidecar] {
        assert_eq!(container["securityContext"]["runAsUser"], 10001);
        assert!(
            container["volumeMounts"]
                .to_string()
                .contains("coffer-token")
        );
    }
    assert_eq!(
        patched["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
    let app = &containers(&patched, "containers")[1];
    assert_eq!(
        app["volumeMounts"],
        json!([{"name": "coffer-secrets", "mountPath": "/coffer/secrets", "readOnly": true}])
    );
}

#[test]
fn init_only_mode_adds_the_once_init_container_alone() {
    // The annotation overrides the injector's default (native).
    let injector = Injector::start();
    let pod = opted_in_as("init-only");
    let patched = apply(pod.clone(), &injector.create(&pod));
    assert_eq!(names(&patched, "initContainers"), ["coffer-sidecar-init"]);
    assert_eq!(names(&patched, "containers"), ["web"]);
    let init = &containers(&patched, "initContainers")[0];
    assert!(has_arg(init, "--once"));
    assert!(init.get("restartPolicy").is_none(), "{init}");
    assert!(!has_probe(init), "{init}");
}

#[test]
fn the_annotation_can_ask_for_native_where_the_default_is_container() {
    let injector = Injector::start_with(&["--sidecar-mode=container"]);
    let pod = opted_in_as("native");
    let patched = apply(pod.clone(), &injector.create(&pod));
    assert_eq!(names(&patched, "initContainers"), ["coffer-sidecar"]);
    assert_eq!(names(&patched, "containers"), ["web"]);
    assert_eq!(
        containers(&patched, "initContainers")[0]["restartPolicy"],
        "Always"
    );
}

#[test]
fn an_unknown_sidecar_mode_is_refused_with_the_annotations_name() {
    let injector = Injector::start();
    let response = injector.create(&opted_in_as("sidecar"));
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("coffer.dev/sidecar-mode"), "{message}");
    assert!(message.contains("\"sidecar\""), "{message}");
}

#[test]
fn a_pod_in_an_excluded_namespace_is_allowed_unchanged() {
    let injector = Injector::start();
    for namespace in ["kube-system", "kube-public", "kube-node-lease", "coffer"] {
        let response = review_in(&injector, namespace, &opted_in());
        assert_eq!(response["allowed"], true, "{namespace}");
        assert!(response.get("patch").is_none(), "{namespace}: {response}");
    }
    let output = injector.output();
    assert!(
        output.contains("namespace excluded from injection"),
        "{output}"
    );
    assert!(!output.contains("sidecar injected"), "{output}");
}

#[test]
fn the_excluded_namespaces_are_set_by_flag() {
    let injector = Injector::start_with(&[
        "--exclude-namespace=legacy,batch",
        "--exclude-namespace=shop",
    ]);
    let response = review_in(&injector, "shop", &opted_in());
    assert!(response.get("patch").is_none(), "{response}");
    // The flag replaces the defaults.
    let response = review_in(&injector, "kube-system", &opted_in());
    assert_eq!(response["patchType"], "JSONPatch");
}

#[tokio::test]
async fn the_generated_config_is_loaded_by_the_real_sidecar_run_as_the_init_container() {
    let injector = Injector::start();
    let pod = opted_in_as("container");
    let patched = apply(pod.clone(), &injector.create(&pod));
    let init = &containers(&patched, "initContainers")[0];
    let config = patched["metadata"]["annotations"]["coffer.dev/sidecar-config"]
        .as_str()
        .unwrap();

    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", CANARY)]).await;
    // Where the kubelet would mount the volumes, here.
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::Builder::new()
        .prefix("coffer-injected-")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::write(dir.path().join("token"), mint(Key::Rsa, "shop", "web")).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &injector.ca).unwrap();
    let config = config
        .replace("https://coffer-broker.coffer.svc:8443", &broker.endpoint)
        .replace(
            "/var/run/secrets/coffer/token",
            dir.path().join("token").to_str().unwrap(),
        )
        .replace(
            "/etc/coffer/ca/ca.crt",
            dir.path().join("ca.crt").to_str().unwrap(),
        )
        .replace("/coffer/secrets", out.path().to_str().unwrap())
        .replace("0.0.0.0:8099", "127.0.0.1:0");
    let config_file = dir.path().join("sidecar.yaml");
    std::fs::write(&config_file, config).unwrap();
    // Exactly the init container's arguments, the configuration's path
    // remapped.
    let mut command = Command::new(coffer_tests::binary("coffer-sidecar"));
    for arg in init["args"].as_array().unwrap() {
        let arg = arg.as_str().unwrap();
        if arg.starts_with("--config=") {
            command.arg(format!("--config={}", config_file.display()));
        } else {
            command.arg(arg);
        }
    }
    assert!(has_arg(init, "--once"));
    let mut sidecar = Process::spawn(command, dir.path().join("sidecar.log"));
    let status = sidecar.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        sidecar.output()
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("db-password")).unwrap(),
        CANARY
    );
    assert!(!sidecar.output().contains(CANARY));
    assert!(!injector.output().contains(CANARY));
}

#[test]
fn a_pod_that_does_not_opt_in_is_allowed_unchanged() {
    let injector = Injector::start();
    let mut pod = opted_in();
    pod["metadata"]["labels"]["coffer.dev/inject"] = json!("false");
    let response = injector.create(&pod);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[test]
fn invalid_annotations_are_refused_with_their_name() {
    let injector = Injector::start();
    let mut pod = opted_in();
    pod["metadata"]["annotations"]["coffer.dev/fromat-db"] = json!("json");
    let response = injector.create(&pod);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("coffer.dev/fromat-db"), "{message}");
}

#[test]
fn an_app_container_mounting_the_token_volume_is_refused() {
    let injector = Injector::start();
    let mut pod = opted_in();
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "coffer-token", "mountPath": "/stolen"}]);
    let response = injector.create(&pod);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(message.contains("coffer-token"), "{message}");
}

#[test]
fn a_pod_with_a_conflicting_volume_is_refused() {
    let injector = Injector::start();
    let mut pod = opted_in();
    pod["spec"]["volumes"] = json!([{"name": "coffer-secrets", "emptyDir": {}}]);
    let response = injector.create(&pod);
    assert_eq!(response["allowed"], false);
}

#[test]
fn a_body_that_is_not_an_admission_review_is_a_bad_request() {
    let injector = Injector::start();
    let (status, _) = https_request(
        &injector.addr,
        &injector.ca,
        "POST",
        "/mutate",
        b"{\"kind\":\"Pod\"}",
    )
    .unwrap();
    assert_eq!(status, 400);
}
