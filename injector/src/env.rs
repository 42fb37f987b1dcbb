//! Secrets as environment variables (docs/env.md): `coffer-env` in front of
//! the app's own command.
//!
//! | annotation | meaning |
//! | ---------- | ------- |
//! | `coffer.dev/env: "true"` | every app container (`"web,worker"`: those; `"false"`: none) |
//! | `coffer.dev/env-restart-on-change: "true"` | run `coffer-env --restart-on-change` (restart the app on rotation) |
//! | `coffer.dev/env-command-<container>: '["/app/server"]'` | the command of a container whose spec has none (the webhook cannot read an image's entrypoint) |
//!
//! The pod gets a `medium: Memory` emptyDir `coffer-env-bin`, an init
//! container `coffer-env-init` (the sidecar image, hardened as every added
//! container) that copies `coffer-env` into it, and in each opted-in
//! container: the emptyDir read-only at `/coffer/bin`, the projected token
//! and the broker's CA read-only where the sidecar has them, the
//! variables `COFFER_BROKER`, `COFFER_CA_FILE` and `COFFER_TOKEN_FILE`
//! (unless the container sets them), and `command` rewritten to
//! `[/coffer/bin/coffer-env, (--restart-on-change), --, command...]` (its
//! `args` follow, as before). The values stay references in the pod spec;
//! `coffer-env` resolves them in the container at start.
//!
//! A pod may take environment variables alone (no `coffer.dev/secret-*`):
//! then it gets no sidecar, only the above and the token and CA volumes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    annotations::Layout,
    mode::SidecarMode,
    patch::{Injection, Patch, SIDECAR_UID, mark_injected, security_context},
    pod::{Container, Pod, Raw},
};

/// The opt-in annotation.
pub const ENV: &str = "coffer.dev/env";
/// Whether `coffer-env` restarts the app on rotation.
pub const RESTART: &str = "coffer.dev/env-restart-on-change";
/// `coffer.dev/env-command-<container>`: the command of a container whose
/// spec has none.
pub const COMMAND_PREFIX: &str = "coffer.dev/env-command-";
/// The init container copying `coffer-env`.
pub const ENV_INIT: &str = "coffer-env-init";
/// The Memory emptyDir holding the copy.
pub const ENV_VOLUME: &str = "coffer-env-bin";
/// Where opted-in containers see it.
pub const BIN_DIR: &str = "/coffer/bin";
/// The binary they run.
pub const BINARY: &str = "/coffer/bin/coffer-env";
/// Where the sidecar image carries it.
const IMAGE_BINARY: &str = "/usr/local/bin/coffer-env";

/// Why a pod's environment-variable annotations are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// `coffer.dev/env` is not "true", "false" or a list of containers.
    #[error(
        "{ENV} must be \"true\", \"false\" or a comma-separated list of container names, not {0:?}"
    )]
    BadValue(String),
    /// `coffer.dev/env` names a container the pod does not have.
    #[error(
        "{ENV} names {0:?}, which is not one of the pod's containers (give \"true\", \"false\" \
         or a comma-separated list of container names)"
    )]
    UnknownContainer(String),
    /// An opted-in container has no `command` and no annotation giving it.
    #[error(
        "container {0:?} takes secrets as environment variables ({ENV}) but has no `command` in \
         its spec, and the webhook cannot read the image's entrypoint: set the container's \
         `command` (e.g. command: [\"/app/server\"]), or the annotation \
         {COMMAND_PREFIX}{0}: '[\"/app/server\"]'"
    )]
    NoCommand(String),
    /// A command annotation that is not a list of strings.
    #[error("{0:?} must be a JSON list of strings such as '[\"/app/server\", \"--port=8080\"]'")]
    BadCommand(String),
    /// A container with a `command` and an annotation giving one.
    #[error("container {0:?} has a `command` and the annotation {COMMAND_PREFIX}{0}: keep one")]
    TwoCommands(String),
    /// `coffer.dev/env-restart-on-change` is neither "true" nor "false".
    #[error("{RESTART} must be \"true\" or \"false\", not {0:?}")]
    BadRestart(String),
    /// An env annotation without `coffer.dev/env`.
    #[error("{0:?} needs {ENV}")]
    Orphan(String),
}

/// Which containers opted in, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPlan {
    /// Indices into `spec.containers`.
    pub containers: Vec<usize>,
    /// `--restart-on-change`.
    pub restart: bool,
}

/// Whether `key` (under `coffer.dev/`, without it) is one of this module's
/// annotations: the sidecar's configuration skips them.
pub fn is_env_annotation(rest: &str) -> bool {
    rest == "env" || rest.starts_with("env-")
}

/// The pod's opt-in, or `None` when it takes no environment variables.
pub fn plan(pod: &Pod<'_>) -> Result<Option<EnvPlan>, EnvError> {
    let annotations = pod.annotations();
    let containers = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.as_deref())
        .unwrap_or_default();
    let restart = match annotations.get(RESTART) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(EnvError::BadRestart(other.to_string())),
    };
    let selected: Vec<usize> = match annotations.get(ENV) {
        None | Some("false") => Vec::new(),
        Some("true") => (0..containers.len()).collect(),
        Some(list) => {
            let mut indices = BTreeSet::new();
            for name in list.split(',').map(str::trim) {
                if name.is_empty() {
                    return Err(EnvError::BadValue(list.to_string()));
                }
                let index = containers
                    .iter()
                    .position(|c| c.name() == name)
                    .ok_or_else(|| EnvError::UnknownContainer(name.to_string()))?;
                indices.insert(index);
            }
            indices.into_iter().collect()
        }
    };
    if selected.is_empty() {
        let stray = annotations
            .coffer()
            .map(|(k, _)| k)
            .find(|k| *k == RESTART || k.starts_with(COMMAND_PREFIX));
        return match stray {
            Some(key) if annotations.get(ENV) != Some("false") => {
                Err(EnvError::Orphan(key.to_string()))
            }
            _ => Ok(None),
        };
    }
    for (key, _) in annotations.coffer() {
        if let Some(name) = key.strip_prefix(COMMAND_PREFIX)
            && !selected.iter().any(|i| containers[*i].name() == name)
        {
            return Err(EnvError::Orphan(key.to_string()));
        }
    }
    Ok(Some(EnvPlan {
        containers: selected,
        restart,
    }))
}

/// Appends the operations for `plan` to `ops`, after the sidecar's: `shift`
/// is how many containers the sidecar's operations inserted before the
/// app's (1 in `container` mode), `sidecar` whether its volumes (token, CA)
/// are there.
pub fn add_ops(
    pod: &Pod<'_>,
    injection: &Injection,
    plan: &EnvPlan,
    shift: usize,
    sidecar: bool,
    ops: &mut Vec<Value>,
) -> Result<(), EnvError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let containers = spec.containers.as_deref().unwrap_or_default();
    let layout = &injection.layout;
    // Every rewrite first: a refusal leaves nothing half-made.
    let mut commands = Vec::with_capacity(plan.containers.len());
    for &i in &plan.containers {
        commands.push(command_of(pod, &containers[i], plan.restart)?);
    }
    let mut volumes =
        vec![json!({"name": ENV_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}})];
    if !sidecar {
        volumes.extend([
            json!({"name": "coffer-token", "projected": {"defaultMode": 0o400, "sources": [
                {"serviceAccountToken": {"path": file_name(&layout.token_file), "audience": "coffer", "expirationSeconds": 3600}}
            ]}}),
            json!({"name": "coffer-ca", "configMap": {"name": injection.ca_config_map, "items": [{"key": "ca.crt", "path": file_name(&layout.ca_file)}]}}),
        ]);
    }
    for volume in volumes {
        add_to_list(ops, spec.volumes.is_some(), "/spec/volumes", volume);
    }
    let uid = added_uid(pod);
    let init = json!({
        "name": ENV_INIT,
        "image": injection.image,
        "imagePullPolicy": "Always",
        "command": [IMAGE_BINARY, "--install", BIN_DIR],
        "securityContext": security_context(uid),
        "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
        "volumeMounts": [{"name": ENV_VOLUME, "mountPath": BIN_DIR}],
    });
    add_to_list(
        ops,
        spec.init_containers.is_some(),
        "/spec/initContainers",
        init,
    );

    let mounts = [
        json!({"name": ENV_VOLUME, "mountPath": BIN_DIR, "readOnly": true}),
        json!({"name": "coffer-token", "mountPath": parent(&layout.token_file), "readOnly": true}),
        json!({"name": "coffer-ca", "mountPath": parent(&layout.ca_file), "readOnly": true}),
    ];
    let settings = settings(layout);
    for (&i, command) in plan.containers.iter().zip(commands) {
        let container = &containers[i];
        let at = format!("/spec/containers/{}", i + shift);
        // The sidecar's operations may have made the list (at the pod's
        // own index: they come before any container is inserted).
        let has_mounts = container.volume_mounts.is_some()
            || ops
                .iter()
                .any(|op| op["path"] == format!("/spec/containers/{i}/volumeMounts"));
        for mount in &mounts {
            add_to_list(
                ops,
                has_mounts,
                &format!("{at}/volumeMounts"),
                mount.clone(),
            );
        }
        let raw: Value = serde_json::from_str(container.raw.get()).unwrap_or_default();
        let env = raw["env"].as_array();
        for (name, value) in settings {
            let set = env.is_some_and(|e| e.iter().any(|v| v["name"] == name));
            if !set {
                add_to_list(
                    ops,
                    env.is_some(),
                    &format!("{at}/env"),
                    json!({"name": name, "value": value}),
                );
            }
        }
        // `add` replaces a member that exists.
        ops.push(json!({"op": "add", "path": format!("{at}/command"), "value": command}));
    }
    Ok(())
}

/// The patch of a pod that takes environment variables and no files: no
/// sidecar, only what `coffer-env` needs.
pub fn patch_alone(
    pod: &Pod<'_>,
    injection: &Injection,
    plan: &EnvPlan,
    mode: SidecarMode,
    port: u16,
) -> Result<Patch, EnvError> {
    let mut ops = Vec::new();
    mark_injected(
        &mut ops,
        pod.metadata.annotations.is_some(),
        pod.metadata.labels.is_some(),
    );
    add_ops(pod, injection, plan, 0, false, &mut ops)?;
    Ok(Patch {
        mode,
        port,
        ops,
        warnings: Vec::new(),
    })
}

/// The uid of `coffer-env-init`: the app's (its first container's, or the
/// pod's) when not root, as for the sidecar; else [`SIDECAR_UID`].
fn added_uid(pod: &Pod<'_>) -> i64 {
    let spec = pod.spec.as_ref();
    let first = spec
        .and_then(|s| s.containers.as_deref())
        .and_then(|c| c.first());
    first
        .and_then(|c| c.security_context)
        .and_then(|s| s.run_as_user)
        .or_else(|| {
            spec.and_then(|s| s.security_context)
                .and_then(|s| s.run_as_user)
        })
        .filter(|uid| *uid > 0)
        .unwrap_or(SIDECAR_UID)
}

/// `[coffer-env, (--restart-on-change), --, command...]` for `container`.
fn command_of(
    pod: &Pod<'_>,
    container: &Raw<'_, Container<'_>>,
    restart: bool,
) -> Result<Vec<String>, EnvError> {
    let raw: Value = serde_json::from_str(container.raw.get()).unwrap_or_default();
    let own = match raw.get("command").and_then(Value::as_array) {
        Some(command) if !command.is_empty() => command
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let key = format!("{COMMAND_PREFIX}{}", container.name());
    let annotated = pod
        .annotations()
        .get(&key)
        .map(|text| {
            serde_json::from_str::<Vec<String>>(text)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| EnvError::BadCommand(key.clone()))
        })
        .transpose()?;
    let command = match (own, annotated) {
        (Some(_), Some(_)) => return Err(EnvError::TwoCommands(container.name().to_string())),
        (Some(command), None) | (None, Some(command)) => command,
        (None, None) => return Err(EnvError::NoCommand(container.name().to_string())),
    };
    let mut out = vec![BINARY.to_string()];
    if restart {
        out.push("--restart-on-change".into());
    }
    out.push("--".into());
    out.extend(command);
    Ok(out)
}

/// Adds `value` to the list at `path`, creating it if absent.
fn add_to_list(ops: &mut Vec<Value>, exists: bool, path: &str, value: Value) {
    let exists = exists || ops.iter().any(|op| op["path"] == path);
    if exists {
        ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": [value]}));
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("/", |(dir, _)| dir)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The broker settings an opted-in container gets, as the sidecar has them.
fn settings(layout: &Layout) -> [(&'static str, &str); 3] {
    [
        (coffer::env::BROKER, layout.broker.as_str()),
        (coffer::env::CA_FILE, layout.ca_file.as_str()),
        (coffer::env::TOKEN_FILE, layout.token_file.as_str()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{
        CLIENT_LABEL, INJECTED_ANNOTATION, PatchError, SIDECAR, patch, test_injection, tests::apply,
    };

    fn pod(annotations: Value, containers: Value) -> Value {
        json!({
            "metadata": {"labels": {"coffer.dev/inject": "true"}, "annotations": annotations},
            "spec": {"securityContext": {"runAsUser": 10001}, "containers": containers},
        })
    }

    fn patched(pod: Value, mode: SidecarMode) -> Result<Value, PatchError> {
        let text = pod.to_string();
        let injection = Injection {
            mode,
            ..test_injection()
        };
        let patch = patch(&Pod::parse(&text).unwrap(), &injection)?.unwrap();
        Ok(apply(pod, &patch.ops))
    }

    fn web() -> Value {
        json!([{
            "name": "web", "image": "example/web:1",
            "command": ["/app/server"], "args": ["--port", "8080"],
            "env": [{"name": "DB_PASSWORD", "value": "coffer:shop/db#password"}],
        }])
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn env_alone_adds_coffer_env_and_no_sidecar() {
        let pod = patched(
            pod(json!({ENV: "true", RESTART: "true"}), web()),
            SidecarMode::Native,
        )
        .unwrap();
        assert_eq!(names(&pod["spec"]["initContainers"]), [ENV_INIT]);
        assert_eq!(
            names(&pod["spec"]["volumes"]),
            [ENV_VOLUME, "coffer-token", "coffer-ca"]
        );
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["command"], json!([IMAGE_BINARY, "--install", BIN_DIR]));
        assert_eq!(init["securityContext"], security_context(10001));
        let web = &pod["spec"]["containers"][0];
        assert_eq!(
            web["command"],
            json!([BINARY, "--restart-on-change", "--", "/app/server"])
        );
        assert_eq!(web["args"], json!(["--port", "8080"]));
        // The value stays a reference in the spec.
        assert_eq!(web["env"][0]["value"], "coffer:shop/db#password");
        assert_eq!(
            names(&web["env"]),
            [
                "DB_PASSWORD",
                "COFFER_BROKER",
                "COFFER_CA_FILE",
                "COFFER_TOKEN_FILE"
            ]
        );
        assert!(
            web["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["readOnly"] == true)
        );
        assert_eq!(pod["metadata"]["labels"][CLIENT_LABEL], "true");
        assert_eq!(pod["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
    }

    #[test]
    fn with_files_too_the_sidecar_stays_and_container_mode_indices_shift() {
        let annotations = json!({ENV: "web", "coffer.dev/secret-db": "shop/db"});
        let pod = patched(pod(annotations, web()), SidecarMode::Container).unwrap();
        assert_eq!(names(&pod["spec"]["containers"]), [SIDECAR, "web"]);
        let web = &pod["spec"]["containers"][1];
        assert_eq!(web["command"], json!([BINARY, "--", "/app/server"]));
        assert_eq!(
            names(&web["volumeMounts"]),
            ["coffer-secrets", ENV_VOLUME, "coffer-token", "coffer-ca"]
        );
        // The sidecar has its own command: the image's entrypoint.
        assert!(pod["spec"]["containers"][0].get("command").is_none());
        let volumes = names(&pod["spec"]["volumes"]);
        assert_eq!(volumes.iter().filter(|v| **v == "coffer-token").count(), 1);
    }

    #[test]
    fn only_the_named_containers_are_rewritten() {
        let containers = json!([
            {"name": "web", "command": ["/web"]},
            {"name": "metrics", "image": "example/exporter:1"},
        ]);
        let pod = patched(pod(json!({ENV: "web"}), containers), SidecarMode::Native).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["command"][0], BINARY);
        assert!(pod["spec"]["containers"][1].get("command").is_none());
        assert!(pod["spec"]["containers"][1].get("env").is_none());
    }

    #[test]
    fn a_container_without_a_command_is_refused_unless_an_annotation_gives_it() {
        let containers = json!([{"name": "web", "image": "example/web:1"}]);
        let error = patched(
            pod(json!({ENV: "true"}), containers.clone()),
            SidecarMode::Native,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("container \"web\""), "{error}");
        assert!(error.contains("coffer.dev/env-command-web"), "{error}");
        let annotations =
            json!({ENV: "true", "coffer.dev/env-command-web": "[\"/app/server\", \"-v\"]"});
        let pod = patched(pod(annotations, containers), SidecarMode::Native).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["command"],
            json!([BINARY, "--", "/app/server", "-v"])
        );
    }

    #[test]
    fn bad_annotations_are_refused_with_their_names() {
        let cases = [
            (json!({ENV: "yes"}), "names \"yes\""),
            (json!({ENV: "web,"}), "comma-separated"),
            (json!({ENV: "web,api"}), "\"api\""),
            (json!({ENV: "true", RESTART: "1"}), RESTART),
            (
                json!({RESTART: "true", "coffer.dev/secret-db": "shop/db"}),
                "needs coffer.dev/env",
            ),
            (
                json!({ENV: "true", "coffer.dev/env-command-web": "/app"}),
                "JSON list",
            ),
            (
                json!({ENV: "true", "coffer.dev/env-command-web": "[\"/app\"]"}),
                "keep one",
            ),
        ];
        for (annotations, expected) in cases {
            let error = patched(pod(annotations.clone(), web()), SidecarMode::Native)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{annotations}: {error}");
        }
    }

    #[test]
    fn a_container_that_sets_the_broker_keeps_its_own() {
        let containers = json!([{"name": "web", "command": ["/web"], "env": [{"name": "COFFER_BROKER", "value": "https://other:8443"}]}]);
        let pod = patched(pod(json!({ENV: "true"}), containers), SidecarMode::Native).unwrap();
        let env = &pod["spec"]["containers"][0]["env"];
        assert_eq!(
            names(env),
            ["COFFER_BROKER", "COFFER_CA_FILE", "COFFER_TOKEN_FILE"]
        );
        assert_eq!(env[0]["value"], "https://other:8443");
    }
}
