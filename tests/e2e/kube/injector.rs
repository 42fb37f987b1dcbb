//! The injector called by the real API server (v1.20) through the
//! `MutatingWebhookConfiguration` the overlays ship (rendered by `kubectl
//! kustomize`, its service reference replaced by the injector's loopback
//! URL), the injector running with the rendered arguments (addresses and
//! certificate paths changed; `--sidecar-mode=container`, since a 1.20
//! server has no native sidecars). Checked on the pods the server stores:
//! the sidecar is there and admissible, unlabelled pods and excluded
//! namespaces are untouched (the namespace label the webhook's selector
//! relies on does not exist before 1.21), a hostile annotation is refused
//! with the injector's message, so are an update of what the injector added
//! and annotations over Kubernetes' budget, other updates pass, and with the
//! injector down an opted-in pod is refused (failurePolicy Fail) while the
//! rest of the cluster is not.

use std::{process::Command, time::Duration};

use base64::Engine;
use coffer_tests::{Process, binary, deploy, eventually, kube::ApiServer};
use serde_json::{Value, json};

pub(super) struct Injector {
    pub(super) process: Process,
    pub(super) url: String,
    _dir: tempfile::TempDir,
}

/// Starts the injector with the overlay's arguments, serving a certificate
/// of the cluster CA on 127.0.0.1.
pub(super) fn start_injector(cluster: &ApiServer) -> Injector {
    let objects = deploy::objects("overlays/vault");
    let deployment = deploy::find(&objects, "Deployment", "coffer-injector");
    let rendered: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = cluster.serving_certificate();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let mut args: Vec<String> = rendered
        .iter()
        .map(|arg| match arg.split_once('=') {
            Some(("--listen", _)) => "--listen=127.0.0.1:0".to_string(),
            Some(("--tls-cert", _)) => {
                format!("--tls-cert={}", dir.path().join("tls.crt").display())
            }
            Some(("--tls-key", _)) => format!("--tls-key={}", dir.path().join("tls.key").display()),
            Some(("--sidecar-mode", _)) => "--sidecar-mode=container".to_string(),
            _ => arg.clone(),
        })
        .collect();
    if !args.iter().any(|a| a.starts_with("--sidecar-mode=")) {
        args.push("--sidecar-mode=container".to_string());
    }
    let addr_file = dir.path().join("addr");
    let mut command = Command::new(binary("coffer-injector"));
    command.args(&args).env("COFFER_ADDR_FILE", &addr_file);
    let mut process = Process::spawn(command, dir.path().join("injector.log"));
    let addr = eventually(Duration::from_secs(20), "the injector to listen", || {
        if let Some(status) = process.wait(Duration::ZERO) {
            panic!("the injector exited ({status}):\n{}", process.output());
        }
        std::fs::read_to_string(&addr_file).ok()
    });
    Injector {
        process,
        url: format!("https://{}/mutate", addr.trim()),
        _dir: dir,
    }
}

/// Registers the overlay's webhook, pointed at `url`.
pub(super) fn register_webhook(cluster: &ApiServer, url: &str) {
    let objects = deploy::objects("overlays/vault");
    let mut webhook =
        deploy::find(&objects, "MutatingWebhookConfiguration", "coffer-injector").clone();
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(cluster.ca_pem());
    for hook in webhook["webhooks"].as_array_mut().unwrap() {
        assert_eq!(hook["failurePolicy"], "Fail");
        hook["clientConfig"] = json!({"url": url, "caBundle": ca_bundle});
    }
    cluster.apply(&webhook.to_string());
}

/// A pod of `shop/web` with the injection label (when `inject`) and
/// `annotations`.
fn pod(namespace: &str, name: &str, inject: bool, annotations: Value) -> Value {
    let mut labels = json!({"app": "web"});
    if inject {
        labels["coffer.dev/inject"] = json!("true");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": "web",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
            "containers": [{"name": "app", "image": "example.invalid/web:1"}],
        },
    })
}

fn secret_annotations() -> Value {
    json!({
        "coffer.dev/secret-db": "shop/web/db#password",
        "coffer.dev/file-db": "db-password",
    })
}

/// `kubectl create -f -` of `object`: the stored object, or the error.
pub(super) fn create(cluster: &ApiServer, object: &Value) -> Result<Value, String> {
    let output = cluster.kubectl_with_input(
        &["create", "-o", "json", "-f", "-"],
        Some(&object.to_string()),
    );
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

pub(super) fn names(containers: &Value) -> Vec<String> {
    containers
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_api_server_stores_injected_pods_and_refuses_what_the_injector_refuses() {
    let cluster = ApiServer::shared();
    let mut injector = start_injector(&cluster);
    register_webhook(&cluster, &injector.url);
    let namespace = cluster.namespace("shop");
    cluster.service_account(&namespace, "web");

    // An opted-in pod is stored with the sidecar, in a shape 1.20 keeps.
    let stored = create(
        &cluster,
        &pod(&namespace, "web-0", true, secret_annotations()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", injector.process.output()));
    let spec = &stored["spec"];
    let containers = names(&spec["containers"]);
    let init = names(&spec["initContainers"]);
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert_eq!(
        containers[1], "app",
        "the sidecar starts first: {containers:?}"
    );
    assert_eq!(init.len(), 1, "{init:?}");
    let init_container = &spec["initContainers"][0];
    assert!(init_container.get("restartPolicy").is_none());
    assert!(init_container.get("readinessProbe").is_none());
    assert!(
        init_container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--once"),
        "{init_container}"
    );
    let sidecar = &spec["containers"][0];
    assert!(sidecar["readinessProbe"].is_object(), "{sidecar}");
    assert!(sidecar["readinessProbe"].get("grpc").is_none());
    assert!(
        stored["metadata"]["annotations"]["coffer.dev/sidecar-config"].is_string(),
        "the stored pod carries the sidecar's configuration"
    );

    // An unlabelled pod is never sent to the injector.
    let plain = create(&cluster, &pod(&namespace, "plain-0", false, json!({}))).unwrap();
    assert_eq!(names(&plain["spec"]["containers"]), ["app"]);

    // kube-public has no kubernetes.io/metadata.name label on 1.20, so the
    // webhook's namespaceSelector does not exclude it: the injector does.
    cluster.service_account("kube-public", "web");
    let excluded = create(
        &cluster,
        &pod("kube-public", "web-0", true, secret_annotations()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", injector.process.output()));
    assert_eq!(names(&excluded["spec"]["containers"]), ["app"]);
    assert!(excluded["spec"].get("initContainers").is_none());

    // A hostile annotation is refused with the injector's reason.
    let mut hostile = secret_annotations();
    hostile["coffer.dev/mode-db"] = json!("4777");
    let error = create(&cluster, &pod(&namespace, "hostile-0", true, hostile)).unwrap_err();
    assert!(error.contains("coffer-injector:"), "{error}");
    assert!(error.contains("mode"), "{error}");
    let mut typo = secret_annotations();
    typo["coffer.dev/fromat-db"] = json!("json");
    let error = create(&cluster, &pod(&namespace, "typo-0", true, typo)).unwrap_err();
    assert!(error.contains("coffer.dev/fromat-db"), "{error}");

    // A native sidecar asked for on 1.20: the server refuses the pod (this
    // is why `container` mode exists), and says why.
    let mut native = secret_annotations();
    native["coffer.dev/sidecar-mode"] = json!("native");
    let error = create(&cluster, &pod(&namespace, "native-0", true, native)).unwrap_err();
    assert!(error.contains("initContainers"), "{error}");

    // After injection, the API server sends updates too (issue #22): what
    // the injector added cannot change, anything else can.
    let kubectl = |args: &[&str]| {
        let output = cluster.kubectl(args);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, error) = kubectl(&[
        "-n",
        &namespace,
        "annotate",
        "--overwrite",
        "pod",
        "web-0",
        "coffer.dev/sidecar-config=broker: https://evil.example:443",
    ]);
    assert!(!ok, "the sidecar's configuration was changed");
    assert!(error.contains("coffer-injector:"), "{error}");
    assert!(error.contains("coffer.dev/sidecar-config"), "{error}");
    let (ok, error) = kubectl(&[
        "-n",
        &namespace,
        "label",
        "pod",
        "web-0",
        "coffer.dev/inject-",
    ]);
    assert!(!ok, "the inject label was removed");
    assert!(error.contains("coffer.dev/inject"), "{error}");
    let (ok, error) = kubectl(&["-n", &namespace, "label", "pod", "web-0", "team=shop"]);
    assert!(ok, "{error}\n{}", injector.process.output());
    let stored = cluster.get(&namespace, "pod", "web-0");
    assert_eq!(stored["metadata"]["labels"]["team"], "shop");

    // Annotations past Kubernetes' budget are refused by the injector,
    // naming it, rather than by the API server's opaque "Too long".
    let mut large = secret_annotations();
    large["coffer.dev/template-db"] =
        json!(format!("{{{{ password }}}}{}", "#".repeat(150 * 1024)));
    let error = create(&cluster, &pod(&namespace, "large-0", true, large)).unwrap_err();
    assert!(error.contains("coffer-injector:"), "{error}");
    assert!(error.contains("262144"), "{error}");

    // The injector down: an opted-in pod is refused (never started without
    // its secrets); the rest of the cluster is not blocked.
    injector.process.kill();
    let error = create(
        &cluster,
        &pod(&namespace, "web-1", true, secret_annotations()),
    )
    .unwrap_err();
    assert!(error.contains("failed calling webhook"), "{error}");
    let plain = create(&cluster, &pod(&namespace, "plain-1", false, json!({}))).unwrap();
    assert_eq!(names(&plain["spec"]["containers"]), ["app"]);
}
