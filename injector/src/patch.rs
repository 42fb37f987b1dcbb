//! The JSONPatch that adds the sidecar to a pod.
//!
//! Added: a native sidecar (an init container with `restartPolicy: Always`,
//! first, so it starts before everything else) with a startupProbe on
//! `/ready`; a `medium: Memory` emptyDir for the files, mounted read-only
//! into every app container; the projected `audience: coffer` token and the
//! broker's CA, mounted into the sidecar only; and the generated sidecar
//! configuration, kept in a pod annotation and mounted with the downward API
//! (no ConfigMap to create or clean up).

use serde_json::{Value, json};

use crate::annotations::{AnnotationError, Layout, sidecar_config};

/// The annotation holding the generated sidecar configuration.
pub const CONFIG_ANNOTATION: &str = "coffer.dev/sidecar-config";
/// Set on pods the injector patched.
pub const INJECTED_ANNOTATION: &str = "coffer.dev/injected";
/// The label the broker's NetworkPolicy admits.
pub const CLIENT_LABEL: &str = "coffer.dev/client";

const SIDECAR: &str = "coffer-sidecar";
const VOLUMES: [&str; 4] = [
    "coffer-secrets",
    "coffer-token",
    "coffer-ca",
    "coffer-config",
];

/// What the injector is configured with.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The sidecar image.
    pub image: String,
    /// The ConfigMap (in the pod's namespace) holding the broker's CA as `ca.crt`.
    pub ca_config_map: String,
    /// Where the apps see the files.
    pub layout: Layout,
}

/// Why a pod is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The annotations are invalid.
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
    /// The pod already uses a name the injector needs.
    #[error("the pod already has a {0} named {1:?}: remove it or the coffer.dev/inject label")]
    Conflict(&'static str, String),
    /// The object is not a pod.
    #[error("not a pod: {0}")]
    NotAPod(String),
}

/// The patch operations for `pod`, or `None` when it does not opt in.
pub fn patch(pod: &Value, injection: &Injection) -> Result<Option<Vec<Value>>, PatchError> {
    if !crate::annotations::wants_injection(pod)? {
        return Ok(None);
    }
    let spec = &pod["spec"];
    let Some(containers) = spec["containers"].as_array() else {
        return Err(PatchError::NotAPod("no spec.containers".into()));
    };
    let empty = serde_json::Map::new();
    let annotations = pod["metadata"]["annotations"].as_object().unwrap_or(&empty);
    if annotations.contains_key(INJECTED_ANNOTATION) {
        // Already injected (e.g. a reinvocation): nothing to add.
        return Ok(None);
    }
    for container in containers
        .iter()
        .chain(spec["initContainers"].as_array().into_iter().flatten())
    {
        if container["name"] == SIDECAR {
            return Err(PatchError::Conflict("container", SIDECAR.into()));
        }
        // A mount naming an injected volume would let that container see it
        // (the token above all) once the volume exists.
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            if let Some(name) = mount["name"].as_str().filter(|n| VOLUMES.contains(n)) {
                return Err(PatchError::Conflict("volume mount", name.into()));
            }
        }
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(name) = volume["name"].as_str().filter(|n| VOLUMES.contains(n)) {
            return Err(PatchError::Conflict("volume", name.into()));
        }
    }
    let config = sidecar_config(annotations, &injection.layout)?;

    let mut ops = Vec::new();
    // Metadata: the config, the marker, the NetworkPolicy label.
    add_to_map(
        &mut ops,
        pod,
        "/metadata/annotations",
        CONFIG_ANNOTATION,
        json!(config),
    );
    add_to_map(
        &mut ops,
        pod,
        "/metadata/annotations",
        INJECTED_ANNOTATION,
        json!("true"),
    );
    add_to_map(
        &mut ops,
        pod,
        "/metadata/labels",
        CLIENT_LABEL,
        json!("true"),
    );

    // The sidecar runs as the app's uid, so the files are the app's without
    // CAP_CHOWN; when the pod sets none, the image's nonroot user.
    let uid = containers[0]["securityContext"]["runAsUser"]
        .as_u64()
        .or_else(|| spec["securityContext"]["runAsUser"].as_u64());
    let mut security = json!({
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    if let Some(uid) = uid {
        security["runAsUser"] = json!(uid);
    }
    let port = injection
        .layout
        .admin_listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8099);
    let sidecar = json!({
        "name": SIDECAR,
        "image": injection.image,
        "imagePullPolicy": "Always",
        "restartPolicy": "Always",
        "args": ["--config=/etc/coffer/config/sidecar.yaml", "--log-format=json"],
        "ports": [{"name": "coffer-admin", "containerPort": port}],
        "startupProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 10},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 20},
        "securityContext": security,
        "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
        "volumeMounts": [
            {"name": "coffer-secrets", "mountPath": injection.layout.output_dir},
            {"name": "coffer-token", "mountPath": parent(&injection.layout.token_file), "readOnly": true},
            {"name": "coffer-ca", "mountPath": parent(&injection.layout.ca_file), "readOnly": true},
            {"name": "coffer-config", "mountPath": "/etc/coffer/config", "readOnly": true},
        ],
    });
    // First: native sidecars start in order, so the app's own init
    // containers can already read the files.
    if spec["initContainers"].as_array().is_some() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
    }
    let token_file = file_name(&injection.layout.token_file);
    let ca_file = file_name(&injection.layout.ca_file);
    let volumes = [
        json!({"name": "coffer-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": "coffer-token", "projected": {"defaultMode": 0o400, "sources": [
            {"serviceAccountToken": {"path": token_file, "audience": "coffer", "expirationSeconds": 3600}}
        ]}}),
        json!({"name": "coffer-ca", "configMap": {"name": injection.ca_config_map, "items": [{"key": "ca.crt", "path": ca_file}]}}),
        json!({"name": "coffer-config", "downwardAPI": {"items": [
            {"path": "sidecar.yaml", "fieldRef": {"fieldPath": format!("metadata.annotations['{CONFIG_ANNOTATION}']")}}
        ]}}),
    ];
    if spec["volumes"].as_array().is_some() {
        for volume in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    // The files, read-only, in every app container; never the token.
    let mount = json!({"name": "coffer-secrets", "mountPath": injection.layout.output_dir, "readOnly": true});
    for (i, container) in containers.iter().enumerate() {
        if container["volumeMounts"].as_array().is_some() {
            ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts/-"), "value": mount}));
        } else {
            ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts"), "value": [mount]}));
        }
    }
    Ok(Some(ops))
}

/// Adds `key: value` to the map at `path`, creating the map if absent.
fn add_to_map(ops: &mut Vec<Value>, pod: &Value, path: &str, key: &str, value: Value) {
    let exists =
        pod.pointer(path).is_some_and(Value::is_object) || ops.iter().any(|op| op["path"] == path);
    if exists {
        let escaped = key.replace('~', "~0").replace('/', "~1");
        ops.push(json!({"op": "add", "path": format!("{path}/{escaped}"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": {key: value}}));
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(dir, _)| dir)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injection() -> Injection {
        Injection {
            image: "coffer/sidecar:test".into(),
            ca_config_map: "coffer-ca".into(),
            layout: Layout {
                broker: "https://coffer-broker.coffer.svc:8443".into(),
                output_dir: "/coffer/secrets".into(),
                token_file: "/var/run/secrets/coffer/token".into(),
                ca_file: "/etc/coffer/ca/ca.crt".into(),
                admin_listen: "0.0.0.0:8099".into(),
            },
        }
    }

    fn pod(spec: Value) -> Value {
        json!({
            "metadata": {
                "labels": {"coffer.dev/inject": "true"},
                "annotations": {"coffer.dev/secret-db": "shop/db#password"},
            },
            "spec": spec,
        })
    }

    #[test]
    fn a_pod_without_the_opt_in_gets_no_patch() {
        let mut pod = pod(json!({"containers": [{"name": "app"}]}));
        pod["metadata"]["labels"] = json!({});
        assert!(patch(&pod, &injection()).unwrap().is_none());
    }

    #[test]
    fn existing_lists_are_appended_to_and_the_sidecar_goes_first() {
        let pod = pod(json!({
            "initContainers": [{"name": "migrate"}],
            "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        let ops = patch(&pod, &injection()).unwrap().unwrap();
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&"/spec/initContainers/0"));
        assert!(paths.contains(&"/spec/volumes/-"));
        assert!(paths.contains(&"/spec/containers/0/volumeMounts/-"));
    }

    #[test]
    fn annotation_keys_are_escaped_in_paths() {
        let pod = pod(json!({"containers": [{"name": "app"}]}));
        let ops = patch(&pod, &injection()).unwrap().unwrap();
        assert!(
            ops.iter()
                .any(|o| o["path"] == "/metadata/annotations/coffer.dev~1sidecar-config")
        );
    }

    #[test]
    fn an_already_injected_pod_is_left_alone() {
        let mut pod = pod(json!({"containers": [{"name": "app"}]}));
        pod["metadata"]["annotations"][INJECTED_ANNOTATION] = json!("true");
        assert!(patch(&pod, &injection()).unwrap().is_none());
    }
}
