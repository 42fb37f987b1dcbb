//! What the real `coffer-injector` checks in a pod before it admits it, so
//! that an admitted pod also runs (issue #22): the sidecar runs as a
//! non-root uid even in a pod of root, its probe port never collides with a
//! port of the pod, the annotations it adds keep the pod within Kubernetes'
//! 256 KiB annotation budget or the pod is refused naming the budget, and a
//! template is rendered at admission as the sidecar will render it, so one
//! that cannot render is refused with the reason. The annotations
//! docs/deploy.md shows are admitted.

use crate::injector::common as injector_common;

use injector_common::{Injector, container, opted_in, pod, refusal};
use serde_json::{Value, json};

const MODES: [&str; 3] = ["native", "container", "init-only"];
/// Kubernetes' limit on the total size of a pod's annotations (keys and
/// values), TotalAnnotationSizeLimitB.
const ANNOTATION_BUDGET: usize = 256 * 1024;

/// The containers the injector added.
fn coffer_containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|field| pod["spec"][field].as_array().into_iter().flatten())
        .filter(|c| c["name"].as_str().unwrap().starts_with("coffer-"))
        .collect()
}

fn with_annotations(mut pod: Value, pairs: &[(&str, &str)]) -> Value {
    for (key, value) in pairs {
        pod["metadata"]["annotations"][*key] = json!(value);
    }
    pod
}

fn annotations_size(pod: &Value) -> usize {
    pod["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| k.len() + v.as_str().unwrap().len())
        .sum()
}

#[test]
fn a_root_pod_gets_a_sidecar_running_as_a_non_root_uid_of_its_own() {
    let injector = Injector::start();
    let mut root = opted_in();
    root["spec"]["securityContext"] = json!({"runAsUser": 0, "runAsNonRoot": false});
    root["spec"]["containers"][0]["securityContext"] = json!({"runAsNonRoot": false});
    for mode in MODES {
        let pod = with_annotations(root.clone(), &[("coffer.dev/sidecar-mode", mode)]);
        let injected = injector.injected(&pod);
        for sidecar in coffer_containers(&injected) {
            let security = &sidecar["securityContext"];
            assert_eq!(security["runAsNonRoot"], true, "{mode}: {sidecar}");
            assert_eq!(security["runAsUser"], 65532, "{mode}: {sidecar}");
        }
    }
}

#[test]
fn the_app_containers_uid_wins_over_the_pods() {
    let injector = Injector::start();
    let mut pod = opted_in();
    // The pod says 10001, the app container itself runs as root.
    pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 0});
    let injected = injector.injected(&pod);
    assert_eq!(
        container(&injected, "coffer-sidecar")["securityContext"]["runAsUser"],
        65532
    );
    let injected = injector.injected(&opted_in());
    assert_eq!(
        container(&injected, "coffer-sidecar")["securityContext"]["runAsUser"],
        10001,
        "a non-root app's uid, so the files are the app's"
    );
}

#[test]
fn a_probe_port_the_pod_already_uses_is_moved_to_a_free_one() {
    let injector = Injector::start();
    let mut pod = opted_in();
    pod["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8099}]);
    pod["spec"]["initContainers"] = json!([{
        "name": "proxy", "image": "example/proxy:1", "restartPolicy": "Always",
        "ports": [{"containerPort": 8100, "protocol": "TCP"}],
    }]);
    for mode in ["native", "container"] {
        let pod = with_annotations(pod.clone(), &[("coffer.dev/sidecar-mode", mode)]);
        let injected = injector.injected(&pod);
        let sidecar = container(&injected, "coffer-sidecar");
        let port = sidecar["ports"][0]["containerPort"].as_u64().unwrap();
        assert!(port != 8099 && port != 8100, "{mode}: {port}");
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            if let Some(probe) = sidecar.get(probe) {
                assert_eq!(probe["httpGet"]["port"], port, "{mode}: {probe}");
            }
        }
        let config = injected["metadata"]["annotations"]["coffer.dev/sidecar-config"]
            .as_str()
            .unwrap();
        let config: Value = serde_norway::from_str(config).unwrap();
        assert_eq!(config["adminListen"], format!("0.0.0.0:{port}"), "{mode}");
        // No two containers of the pod declare one port.
        let mut declared: Vec<u64> = ["initContainers", "containers"]
            .iter()
            .flat_map(|f| injected["spec"][f].as_array().into_iter().flatten())
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .map(|p| p["containerPort"].as_u64().unwrap())
            .collect();
        let count = declared.len();
        declared.sort();
        declared.dedup();
        assert_eq!(declared.len(), count, "{mode}: {declared:?}");
    }
}

#[test]
fn a_pod_without_a_port_clash_keeps_the_usual_probe_port() {
    let injector = Injector::start();
    let injected = injector.injected(&opted_in());
    let sidecar = container(&injected, "coffer-sidecar");
    assert_eq!(sidecar["ports"][0]["containerPort"], 8099);
}

/// [`opted_in`] whose `db` file is a template of `size` bytes.
fn with_template_of_size(size: usize) -> Value {
    let mut template = String::from("password={{ password }}\n");
    template.push_str(&"#".repeat(size - template.len()));
    with_annotations(opted_in(), &[("coffer.dev/template-db", &template)])
}

#[test]
fn annotations_over_the_budget_are_refused_naming_it() {
    let injector = Injector::start();
    let message = refusal(&injector.create(&with_template_of_size(150 * 1024)));
    assert!(message.contains("262144"), "{message}");
    assert!(message.contains("coffer.dev/sidecar-config"), "{message}");
}

#[test]
fn the_budget_refuses_exactly_the_pods_kubernetes_would() {
    let injector = Injector::start();
    let (mut allowed, mut refused) = (0, 0);
    // Twice the template (its annotation and the configuration) crosses
    // 256 KiB in this range.
    for size in (124 * 1024..=132 * 1024).step_by(512) {
        let pod = with_template_of_size(size);
        let response = injector.create(&pod);
        if response["allowed"] == true {
            let injected = injector_common::apply(pod, &response);
            let total = annotations_size(&injected);
            assert!(total <= ANNOTATION_BUDGET, "{size}: {total} bytes admitted");
            allowed += 1;
        } else {
            let message = refusal(&response);
            let total: usize = message
                .split_whitespace()
                .find_map(|word| word.parse().ok())
                .unwrap_or_else(|| panic!("no size in {message}"));
            assert!(
                total > ANNOTATION_BUDGET,
                "{size}: refused at {total}: {message}"
            );
            refused += 1;
        }
    }
    assert!(
        allowed > 0 && refused > 0,
        "{allowed} allowed, {refused} refused"
    );
}

fn template_answer(injector: &Injector, path: &str, template: &str) -> Value {
    let pod = pod(json!({
        "coffer.dev/secret-db": path,
        "coffer.dev/template-db": template,
    }));
    injector.create(&pod)
}

#[test]
fn a_template_the_sidecar_cannot_render_is_refused() {
    let injector = Injector::start();
    for (path, template) in [
        // vault-k8s habits: no `source`, keys are variables of their own.
        ("shop/db#password", "{{ source.password }}"),
        ("shop/db", "{{ source.password }}"),
        // `path#key` puts that key alone in scope.
        ("shop/db#password", "{{ user }}"),
        ("shop/db#password", "{{ value }}"),
        // A value is a string: it has no attributes.
        ("shop/db", "{{ password.value }}"),
        ("shop/db", "{{ password | no_such_filter }}"),
    ] {
        let message = refusal(&template_answer(&injector, path, template));
        assert!(message.contains("template"), "{template}: {message}");
        assert!(message.contains("\"db\""), "{template}: {message}");
    }
}

#[test]
fn templates_the_sidecar_can_render_are_admitted() {
    let injector = Injector::start();
    for (path, template) in [
        ("shop/db#password", "{{ password }}"),
        ("shop/db#password", "{{ secret.password | tojson }}"),
        (
            "shop/db",
            "user={{ user }}\npassword={{ password | tojson }}\n",
        ),
        ("shop/db", "{{ secret[\"db-password\"] }}"),
        (
            "shop/db",
            "{% for k, v in secret | dictsort %}{{ k }}={{ v }}\n{% endfor %}",
        ),
        ("shop/db", "{% if tls is defined %}{{ tls }}{% endif %}"),
        ("shop/db#port", "{{ port | int + 1 }}"),
    ] {
        let response = template_answer(&injector, path, template);
        assert_eq!(response["allowed"], true, "{template}: {response}");
    }
}

/// The annotations of the example in docs/deploy.md ("By annotation").
fn documented_annotations() -> Value {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy.md"),
    )
    .unwrap();
    let block = doc
        .split("```yaml")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block))
        // Past the rest of the info string (```yaml NAME).
        .filter_map(|block| block.split_once('\n').map(|(_, body)| body))
        .find(|block| block.contains("coffer.dev/template-db"))
        .expect("docs/deploy.md shows the annotations");
    let yaml: Value = serde_norway::from_str(block).unwrap();
    yaml["metadata"]["annotations"].clone()
}

#[test]
fn the_annotations_docs_deploy_md_shows_are_admitted() {
    let injector = Injector::start();
    let annotations = documented_annotations();
    assert!(annotations["coffer.dev/template-db"].is_string());
    let response = injector.create(&pod(annotations));
    assert_eq!(response["allowed"], true, "{response}");
}
