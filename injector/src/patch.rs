//! The JSONPatch that adds the sidecar to a pod.
//!
//! Added in every [`SidecarMode`]: a `medium: Memory` emptyDir for the files,
//! mounted read-only into every app container; the projected
//! `audience: coffer` token and the broker's CA, mounted into the sidecar
//! only; and the generated sidecar configuration, kept in a pod annotation
//! and mounted with the downward API (no ConfigMap to create or clean up).
//! Then, by mode:
//!
//! - `native`: the sidecar as the first init container with
//!   `restartPolicy: Always` (so it starts before everything else) and a
//!   startupProbe on `/ready`, so nothing after it starts before the files
//!   exist.
//! - `container`: the sidecar with `--once` as the first init container
//!   (the files exist before any other container starts: an ordinary
//!   container gives no such guarantee), then the long-running sidecar as the
//!   first ordinary container, with readiness and liveness probes (and
//!   `kubectl.kubernetes.io/default-container` naming the app's, so kubectl
//!   does not pick the sidecar).
//! - `init-only`: the `--once` init container alone.
//!
//! Every container the injector adds has the same hardening: security
//! context, resources and mounts. They run as the app's uid when it is not
//! root (so the files are the app's without `CAP_CHOWN`), else as
//! [`SIDECAR_UID`]; their probe port is the layout's unless a container of
//! the pod declares it, then the next free one. A pod whose annotations,
//! with the configuration added, would pass Kubernetes' 256 KiB budget is
//! refused, naming the sizes.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::{
    annotations::{
        AnnotationError, Layout, SIDECAR_MODE, sidecar_config, sidecar_mode, wants_injection,
    },
    env::{ENV_INIT, EnvError},
    mode::SidecarMode,
    options::{PodOptions, guaranteed},
    pod::{ANNOTATIONS_BUDGET, DEFAULT_CONTAINER_ANNOTATION, Pod, VOLUMES},
    vault_k8s::admit,
};

/// The annotation holding the generated sidecar configuration.
pub const CONFIG_ANNOTATION: &str = "coffer.dev/sidecar-config";
/// Set on pods the injector patched.
pub const INJECTED_ANNOTATION: &str = "coffer.dev/injected";
/// The label the broker's NetworkPolicy admits.
pub const CLIENT_LABEL: &str = "coffer.dev/client";
/// The long-running sidecar (an init container in `native` mode, an
/// ordinary container in `container` mode).
pub const SIDECAR: &str = "coffer-sidecar";
/// The init container running the sidecar with `--once` (`container` and
/// `init-only` modes).
pub const SIDECAR_INIT: &str = "coffer-sidecar-init";
/// The namespaces whose pods the injector never mutates, unless configured
/// otherwise: the system ones and Coffer's own.
pub const DEFAULT_EXCLUDED_NAMESPACES: [&str; 4] =
    ["kube-system", "kube-public", "kube-node-lease", "coffer"];
/// The uid the sidecar runs as when the app's is root or unknown: the
/// sidecar image's own user (distroless `nonroot`). A non-root app's uid is
/// used instead, so that the files are the app's without `CAP_CHOWN`.
pub const SIDECAR_UID: i64 = 65532;

/// The containers the injector adds.
pub const CONTAINERS: [&str; 3] = [SIDECAR, SIDECAR_INIT, ENV_INIT];
const CONFIG_ARG: &str = "--config=/etc/coffer/config/sidecar.yaml";
/// How long the `--once` init container keeps retrying: the native
/// sidecar's startupProbe allows as long (120 probes, one a second).
const ONCE_TIMEOUT_ARG: &str = "--once-timeout=120";

/// What the injector is configured with.
#[derive(Debug, Clone)]
pub struct Injection {
    /// The sidecar image.
    pub image: String,
    /// The ConfigMap (in the pod's namespace) holding the broker's CA as `ca.crt`.
    pub ca_config_map: String,
    /// Where the apps see the files.
    pub layout: Layout,
    /// The mode for pods without a `coffer.dev/sidecar-mode` annotation.
    pub mode: SidecarMode,
    /// Namespaces whose pods are allowed unchanged, whatever they ask for.
    pub excluded_namespaces: BTreeSet<String>,
}

impl Injection {
    /// Whether pods in `namespace` are left alone.
    pub fn excludes(&self, namespace: &str) -> bool {
        self.excluded_namespaces.contains(namespace)
    }
}

/// The patch for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// The mode the pod got (its annotation, or the injector's default).
    pub mode: SidecarMode,
    /// The sidecar's probe port: the layout's, or the next one free in the
    /// pod.
    pub port: u16,
    /// The JSONPatch operations, all `add`, to apply in order.
    pub ops: Vec<Value>,
    /// The AdmissionReview warnings (ignored vault-k8s annotations).
    pub warnings: Vec<String>,
}

/// Why a pod is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The annotations are invalid.
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
    /// The environment-variable annotations are invalid (`crate::env`).
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The pod already uses a name the injector needs.
    #[error("the pod already has a {0} named {1:?}: remove it or the coffer.dev/inject label")]
    Conflict(&'static str, String),
    /// The object is not a pod.
    #[error("not a pod: {0}")]
    NotAPod(String),
    /// The pod's annotations with the injector's would pass Kubernetes'
    /// limit, and the API server would refuse the pod with "Too long".
    #[error(
        "the pod's annotations would take {total} bytes with the sidecar's configuration \
         ({config} bytes in {CONFIG_ANNOTATION}), over Kubernetes' limit of {ANNOTATIONS_BUDGET} \
         bytes (256 KiB) for all of a pod's annotations: shorten the templates (each is stored \
         twice, in its own annotation and in the configuration)"
    )]
    AnnotationsTooLarge {
        /// The size the annotations would have, keys and values.
        total: usize,
        /// The size of the generated configuration.
        config: usize,
    },
    /// The pod's own annotations are over Kubernetes' limit already.
    #[error(
        "the pod's annotations take {0} bytes, over Kubernetes' limit of {ANNOTATIONS_BUDGET} \
         bytes (256 KiB) for all of a pod's annotations"
    )]
    PodAnnotationsTooLarge(usize),
}

/// The patch for `pod`, or `None` when it does not opt in.
pub fn patch(pod: &Pod<'_>, injection: &Injection) -> Result<Option<Patch>, PatchError> {
    if !wants_injection(pod)? {
        return Ok(None);
    }
    let annotations = pod.annotations();
    if annotations.contains_key(INJECTED_ANNOTATION) {
        // Already injected (e.g. a reinvocation): nothing to add.
        return Ok(None);
    }
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| PatchError::NotAPod("no spec".into()))?;
    let Some(containers) = spec.containers.as_deref().filter(|c| !c.is_empty()) else {
        return Err(PatchError::NotAPod("no spec.containers".into()));
    };
    if annotations.over_budget() {
        return Err(PatchError::PodAnnotationsTooLarge(annotations.total));
    }
    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    for container in containers.iter().chain(init_containers) {
        // Both names, whatever the mode: which one a pod gets must not
        // depend on what it happens to contain.
        if CONTAINERS.contains(&container.name()) {
            return Err(PatchError::Conflict(
                "container",
                container.name().to_string(),
            ));
        }
        // A mount naming an injected volume would let that container see it
        // (the token above all) once the volume exists.
        if let Some(volume) = container
            .volume_mounts
            .as_ref()
            .and_then(|m| m.injected.first())
        {
            return Err(PatchError::Conflict("volume mount", volume.to_string()));
        }
    }
    for volume in spec.volumes.as_deref().unwrap_or_default() {
        if let Some(name) = volume.name.as_deref().filter(|n| VOLUMES.contains(n)) {
            return Err(PatchError::Conflict("volume", name.into()));
        }
    }
    // vault-k8s's annotations become Coffer's; the pod's own stay as they are.
    let admitted = admit(annotations)?;
    let env = crate::env::plan(pod)?;
    let translated = admitted.annotations();
    let mode = sidecar_mode(&translated, injection.mode)?;
    let options = PodOptions::parse(&translated)?;
    // All containers of a pod share one network namespace: the probe port
    // must be one no other container declares.
    let port = free_port(pod, layout_port(&injection.layout));
    let layout = Layout {
        admin_listen: with_port(&injection.layout.admin_listen, port),
        ..injection.layout.clone()
    };
    let config = match (sidecar_config(&translated, &layout), &env) {
        // Environment variables alone: no sidecar.
        (Err(AnnotationError::NoSecrets), Some(env)) => {
            let patch = crate::env::patch_alone(pod, injection, env, mode, port)?;
            return Ok(Some(Patch {
                warnings: admitted.warnings,
                ..patch
            }));
        }
        (config, _) => config.map_err(|e| admitted.in_user_terms(e))?,
    };
    let ca_dir = parent(&injection.layout.ca_file);
    let proxies = crate::proxies::entries(&translated, ca_dir)?;
    if mode == SidecarMode::InitOnly && !proxies.is_empty() {
        return Err(AnnotationError::BadValue {
            annotation: SIDECAR_MODE.into(),
            reason: "init-only writes the files once and exits, and a proxy \
                     (coffer.dev/proxy-<name>) needs the sidecar running: use native or container"
                .into(),
        }
        .into());
    }

    // kubectl logs/exec would pick the sidecar, first in `container` mode.
    let app = containers[0].name();
    let default_container = (mode == SidecarMode::Container
        && !app.is_empty()
        && !annotations.contains_key(DEFAULT_CONTAINER_ANNOTATION))
    .then_some(app);
    let added = [
        (CONFIG_ANNOTATION, config.as_str()),
        (INJECTED_ANNOTATION, "true"),
    ]
    .into_iter()
    .chain(default_container.map(|app| (DEFAULT_CONTAINER_ANNOTATION, app)));
    let mut total = annotations.total;
    for (key, value) in added {
        // `add` replaces an entry of that key.
        total -= annotations.get(key).map_or(0, |old| key.len() + old.len());
        total += key.len() + value.len();
    }
    if total > ANNOTATIONS_BUDGET {
        return Err(PatchError::AnnotationsTooLarge {
            total,
            config: config.len(),
        });
    }

    let mut ops = Vec::new();
    let has_annotations = pod.metadata.annotations.is_some();
    let has_labels = pod.metadata.labels.is_some();
    // Metadata: the config, the marker, the NetworkPolicy label.
    add_to_map(
        &mut ops,
        has_annotations,
        "/metadata/annotations",
        CONFIG_ANNOTATION,
        json!(config),
    );
    mark_injected(&mut ops, has_annotations, has_labels);
    if let Some(app) = default_container {
        add_to_map(
            &mut ops,
            has_annotations,
            "/metadata/annotations",
            DEFAULT_CONTAINER_ANNOTATION,
            json!(app),
        );
    }

    let token_file = file_name(&injection.layout.token_file);
    let ca_file = file_name(&injection.layout.ca_file);
    // The broker's CA, and the upstream CAs the proxies name (keys of the
    // same ConfigMap).
    let mut ca_items = vec![json!({"key": "ca.crt", "path": ca_file})];
    for key in crate::proxies::ca_keys(&proxies, ca_dir) {
        if key != ca_file {
            ca_items.push(json!({"key": key, "path": key}));
        }
    }
    let volumes = [
        json!({"name": "coffer-secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
        json!({"name": "coffer-token", "projected": {"defaultMode": 0o400, "sources": [
            {"serviceAccountToken": {"path": token_file, "audience": "coffer", "expirationSeconds": 3600}}
        ]}}),
        json!({"name": "coffer-ca", "configMap": {"name": injection.ca_config_map, "items": ca_items}}),
        json!({"name": "coffer-config", "downwardAPI": {"items": [
            {"path": "sidecar.yaml", "fieldRef": {"fieldPath": format!("metadata.annotations['{CONFIG_ANNOTATION}']")}}
        ]}}),
    ];
    if spec.volumes.is_some() {
        for volume in volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    // The files, read-only, in every app container; never the token. Before
    // any container is inserted, so the indices are the pod's own.
    ops.extend(options.mount_ops(containers, &injection.layout.output_dir)?);
    if let Some(share) = options.share_process_namespace {
        ops.push(json!({"op": "add", "path": "/spec/shareProcessNamespace", "value": share}));
    }

    // The sidecar runs as the app's uid, so the files are the app's without
    // CAP_CHOWN; when the app runs as root or names no uid, as a non-root
    // uid of its own (a container with runAsNonRoot and uid 0 never
    // starts).
    let app_uid = containers[0]
        .security_context
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.and_then(|s| s.run_as_user));
    let uid = options
        .run_as_user
        .or(app_uid.filter(|uid| *uid > 0))
        .unwrap_or(SIDECAR_UID);
    let sidecars = Sidecars::new(injection, uid, port);
    let guaranteed = guaranteed(pod);
    // First in the init containers: they run in order, so the files exist
    // (or the native sidecar is ready) before any of the app's containers
    // starts. The app's init containers do not mount them (docs/sidecar.md).
    let mut init = match mode {
        SidecarMode::Native => sidecars.native(),
        SidecarMode::Container | SidecarMode::InitOnly => sidecars.once(),
    };
    options.shape(&mut init, guaranteed);
    if spec.init_containers.is_some() {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
    }
    if mode == SidecarMode::Container {
        // First in the containers: the kubelet starts them in order (though
        // it waits for none), so the sidecar is up as early as it can be.
        let mut sidecar = sidecars.long_running();
        options.shape(&mut sidecar, guaranteed);
        ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": sidecar}));
    }
    if let Some(env) = &env {
        let shift = usize::from(mode == SidecarMode::Container);
        crate::env::add_ops(pod, injection, env, shift, true, &mut ops)?;
    }
    let warnings = admitted.warnings;
    Ok(Some(Patch {
        mode,
        port,
        ops,
        warnings,
    }))
}

/// The security context of every container the injector adds.
pub(crate) fn security_context(uid: i64) -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": uid,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

/// The port of `host:port` (the layout's admin address), 8099 if none.
fn layout_port(admin_listen: &Layout) -> u16 {
    admin_listen
        .admin_listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(8099)
}

/// `host:port` with another port.
fn with_port(address: &str, port: u16) -> String {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    format!("{host}:{port}")
}

/// `wanted`, or the next port no container of `pod` declares (wrapping to
/// the unprivileged ports below it).
fn free_port(pod: &Pod<'_>, wanted: u16) -> u16 {
    let used: BTreeSet<u16> = pod
        .all_containers()
        .filter_map(|c| c.ports.as_ref())
        .flat_map(|ports| ports.0.iter().copied())
        .collect();
    (wanted..=u16::MAX)
        .chain(1024..wanted)
        .find(|port| !used.contains(port))
        .unwrap_or(wanted)
}

/// Builds the containers the injector adds, all hardened alike.
struct Sidecars<'a> {
    injection: &'a Injection,
    security: Value,
    port: u16,
}

impl<'a> Sidecars<'a> {
    fn new(injection: &'a Injection, uid: i64, port: u16) -> Self {
        Self {
            injection,
            security: security_context(uid),
            port,
        }
    }

    /// What every added container shares.
    fn base(&self, name: &str, args: &[&str]) -> Value {
        let layout = &self.injection.layout;
        json!({
            "name": name,
            "image": self.injection.image,
            "imagePullPolicy": "Always",
            "args": args,
            "securityContext": self.security,
            "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
            "volumeMounts": [
                {"name": "coffer-secrets", "mountPath": layout.output_dir},
                {"name": "coffer-token", "mountPath": parent(&layout.token_file), "readOnly": true},
                {"name": "coffer-ca", "mountPath": parent(&layout.ca_file), "readOnly": true},
                {"name": "coffer-config", "mountPath": "/etc/coffer/config", "readOnly": true},
            ],
        })
    }

    /// The long-running sidecar, serving `/ready` and `/healthz` on its
    /// probe port (HTTP, so no gRPC probe is needed).
    fn long_running(&self) -> Value {
        let port = self.port;
        let mut container = self.base(SIDECAR, &[CONFIG_ARG, "--log-format=json"]);
        container["ports"] = json!([{"name": "coffer-admin", "containerPort": port}]);
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 10});
        container["livenessProbe"] =
            json!({"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 20});
        container
    }

    /// The long-running sidecar as a native sidecar (Kubernetes 1.29+): the
    /// startupProbe holds back the containers after it until the files exist.
    fn native(&self) -> Value {
        let mut container = self.long_running();
        container["restartPolicy"] = json!("Always");
        container["startupProbe"] = json!({
            "httpGet": {"path": "/ready", "port": self.port},
            "periodSeconds": 1,
            "failureThreshold": 120,
        });
        container
    }

    /// The sidecar writing every file once and exiting: a plain init
    /// container, with no probe and no port (it serves nothing).
    fn once(&self) -> Value {
        self.base(
            SIDECAR_INIT,
            &[CONFIG_ARG, "--once", ONCE_TIMEOUT_ARG, "--log-format=json"],
        )
    }
}

/// Adds `key: value` to the map at `path`, creating the map if absent.
/// The marks every injected pod carries: the annotation that says it was
/// injected, and the label the broker's NetworkPolicy admits.
pub(crate) fn mark_injected(ops: &mut Vec<Value>, has_annotations: bool, has_labels: bool) {
    add_to_map(
        ops,
        has_annotations,
        "/metadata/annotations",
        INJECTED_ANNOTATION,
        json!("true"),
    );
    add_to_map(
        ops,
        has_labels,
        "/metadata/labels",
        CLIENT_LABEL,
        json!("true"),
    );
}

pub(crate) fn add_to_map(ops: &mut Vec<Value>, exists: bool, path: &str, key: &str, value: Value) {
    let exists = exists || ops.iter().any(|op| op["path"] == path);
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

/// The injector as deployed (`native`, default exclusions), for tests.
#[cfg(test)]
pub(crate) fn test_injection() -> Injection {
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
        mode: SidecarMode::Native,
        excluded_namespaces: DEFAULT_EXCLUDED_NAMESPACES.map(String::from).into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{test_injection as injection, *};

    /// The patch of `pod`, parsed as the injector parses a review's object.
    fn patch_of(pod: &Value, injection: &Injection) -> Result<Option<Patch>, PatchError> {
        let text = pod.to_string();
        patch(&Pod::parse(&text).unwrap(), injection)
    }

    fn in_mode(mode: SidecarMode) -> Injection {
        Injection {
            mode,
            ..injection()
        }
    }

    /// A hardened app pod with an init container of its own.
    fn app() -> Value {
        pod(json!({
            "securityContext": {"runAsUser": 10001},
            "initContainers": [{"name": "migrate", "image": "example/migrate:1.0"}],
            "containers": [
                {"name": "web", "image": "example/web:1.0"},
                {"name": "worker", "image": "example/web:1.0", "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }))
    }

    /// Applies the `add` operations in order, as the API server does.
    pub(crate) fn apply(mut doc: Value, ops: &[Value]) -> Value {
        for op in ops {
            assert_eq!(op["op"], "add", "{op}");
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
        doc
    }

    /// The pod as the API server stores it after the patch in `mode`.
    fn patched(pod: Value, mode: SidecarMode) -> Value {
        let patch = patch_of(&pod, &in_mode(mode)).unwrap().unwrap();
        assert_eq!(patch.mode, mode);
        apply(pod, &patch.ops)
    }

    fn list<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
        pod["spec"][field].as_array().map_or(&[], Vec::as_slice)
    }

    fn names(pod: &Value, field: &str) -> Vec<String> {
        list(pod, field)
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn has_probe(container: &Value) -> bool {
        ["startupProbe", "readinessProbe", "livenessProbe"]
            .iter()
            .any(|probe| container.get(*probe).is_some())
    }

    fn mounts_secrets(container: &Value) -> bool {
        container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "coffer-secrets" && m["readOnly"] == true)
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
        assert!(patch_of(&pod, &injection()).unwrap().is_none());
    }

    #[test]
    fn existing_lists_are_appended_to_and_the_sidecar_goes_first() {
        let pod = pod(json!({
            "initContainers": [{"name": "migrate"}],
            "containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }));
        let ops = patch_of(&pod, &injection()).unwrap().unwrap().ops;
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert!(paths.contains(&"/spec/initContainers/0"));
        assert!(paths.contains(&"/spec/volumes/-"));
        assert!(paths.contains(&"/spec/containers/0/volumeMounts/-"));
    }

    #[test]
    fn annotation_keys_are_escaped_in_paths() {
        let pod = pod(json!({"containers": [{"name": "app"}]}));
        let ops = patch_of(&pod, &injection()).unwrap().unwrap().ops;
        assert!(
            ops.iter()
                .any(|o| o["path"] == "/metadata/annotations/coffer.dev~1sidecar-config")
        );
    }

    #[test]
    fn an_already_injected_pod_is_left_alone() {
        let mut pod = pod(json!({"containers": [{"name": "app"}]}));
        pod["metadata"]["annotations"][INJECTED_ANNOTATION] = json!("true");
        assert!(patch_of(&pod, &injection()).unwrap().is_none());
    }

    #[test]
    fn native_mode_adds_a_native_sidecar_first_in_the_init_containers() {
        let pod = patched(app(), SidecarMode::Native);
        assert_eq!(names(&pod, "initContainers"), [SIDECAR, "migrate"]);
        assert_eq!(names(&pod, "containers"), ["web", "worker"]);
        let sidecar = &list(&pod, "initContainers")[0];
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    }

    #[test]
    fn container_mode_puts_the_sidecar_first_in_the_containers() {
        let pod = patched(app(), SidecarMode::Container);
        assert_eq!(names(&pod, "containers"), [SIDECAR, "web", "worker"]);
        let sidecar = &list(&pod, "containers")[0];
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], 8099);
        assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(sidecar.get("restartPolicy").is_none());
        assert!(
            !sidecar["args"]
                .as_array()
                .unwrap()
                .contains(&json!("--once"))
        );
    }

    #[test]
    fn container_mode_writes_the_files_first_with_a_once_init_container() {
        let pod = patched(app(), SidecarMode::Container);
        assert_eq!(names(&pod, "initContainers"), [SIDECAR_INIT, "migrate"]);
        let init = &list(&pod, "initContainers")[0];
        assert!(init["args"].as_array().unwrap().contains(&json!("--once")));
    }

    #[test]
    fn container_mode_mounts_the_files_into_the_apps_after_the_shift() {
        let pod = patched(app(), SidecarMode::Container);
        let containers = list(&pod, "containers");
        assert!(containers[1..].iter().all(mounts_secrets));
        assert_eq!(containers[2]["volumeMounts"][0]["name"], "data");
        // The sidecar's own mount is writable, and it alone has the token.
        assert!(!mounts_secrets(&containers[0]));
        let token = |c: &Value| c["volumeMounts"].to_string().contains("coffer-token");
        assert!(token(&containers[0]));
        assert!(!containers[1..].iter().any(token));
    }

    #[test]
    fn container_mode_keeps_the_app_the_default_container_for_kubectl() {
        let pod = patched(app(), SidecarMode::Container);
        assert_eq!(
            pod["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION],
            "web"
        );
    }

    #[test]
    fn a_default_container_the_pod_names_is_kept() {
        let mut pod = app();
        pod["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION] = json!("worker");
        let pod = patched(pod, SidecarMode::Container);
        assert_eq!(
            pod["metadata"]["annotations"][DEFAULT_CONTAINER_ANNOTATION],
            "worker"
        );
    }

    #[test]
    fn init_only_mode_adds_the_once_init_container_alone() {
        let pod = patched(app(), SidecarMode::InitOnly);
        assert_eq!(names(&pod, "initContainers"), [SIDECAR_INIT, "migrate"]);
        assert_eq!(names(&pod, "containers"), ["web", "worker"]);
        let init = &list(&pod, "initContainers")[0];
        assert!(init["args"].as_array().unwrap().contains(&json!("--once")));
        assert!(list(&pod, "containers").iter().all(mounts_secrets));
    }

    #[test]
    fn outside_native_mode_no_init_container_has_a_restart_policy_or_probes() {
        for mode in [SidecarMode::Container, SidecarMode::InitOnly] {
            let pod = patched(app(), mode);
            for init in list(&pod, "initContainers") {
                assert!(init.get("restartPolicy").is_none(), "{mode}: {init}");
                assert!(!has_probe(init), "{mode}: {init}");
                assert!(init.get("ports").is_none(), "{mode}: {init}");
            }
        }
    }

    #[test]
    fn no_mode_uses_grpc_probes() {
        for mode in SidecarMode::ALL {
            let pod = patched(app(), mode);
            assert!(!pod["spec"].to_string().contains("\"grpc\""), "{mode}");
        }
    }

    #[test]
    fn the_once_init_container_is_hardened_like_the_native_sidecar() {
        let native = patched(app(), SidecarMode::Native);
        let native = &list(&native, "initContainers")[0];
        for mode in [SidecarMode::Container, SidecarMode::InitOnly] {
            let pod = patched(app(), mode);
            let init = &list(&pod, "initContainers")[0];
            for field in [
                "image",
                "imagePullPolicy",
                "securityContext",
                "resources",
                "volumeMounts",
            ] {
                assert_eq!(init[field], native[field], "{mode}: {field}");
            }
            assert_eq!(init["securityContext"]["runAsUser"], 10001);
        }
    }

    #[test]
    fn the_once_init_container_retries_as_long_as_the_startup_probe_waits() {
        let pod = patched(app(), SidecarMode::InitOnly);
        let args = &list(&pod, "initContainers")[0]["args"];
        assert_eq!(
            *args,
            json!([
                CONFIG_ARG,
                "--once",
                "--once-timeout=120",
                "--log-format=json"
            ])
        );
    }

    #[test]
    fn the_annotation_overrides_the_injectors_mode() {
        let mut pod = app();
        pod["metadata"]["annotations"]["coffer.dev/sidecar-mode"] = json!("init-only");
        let patch = patch_of(&pod, &in_mode(SidecarMode::Container))
            .unwrap()
            .unwrap();
        assert_eq!(patch.mode, SidecarMode::InitOnly);
        let pod = apply(pod, &patch.ops);
        assert_eq!(names(&pod, "containers"), ["web", "worker"]);
    }

    #[test]
    fn an_unknown_mode_in_the_annotation_is_refused() {
        let mut pod = app();
        pod["metadata"]["annotations"]["coffer.dev/sidecar-mode"] = json!("sidecar");
        let error = patch_of(&pod, &injection()).unwrap_err();
        assert!(
            matches!(
                &error,
                PatchError::Annotations(AnnotationError::BadSidecarMode(m)) if m == "sidecar"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_pod_using_the_init_container_name_is_refused() {
        let mut pod = app();
        pod["spec"]["initContainers"][0]["name"] = json!(SIDECAR_INIT);
        let error = patch_of(&pod, &in_mode(SidecarMode::Native)).unwrap_err();
        assert!(
            matches!(&error, PatchError::Conflict("container", name) if name == SIDECAR_INIT),
            "{error}"
        );
    }

    #[test]
    fn the_default_exclusions_are_the_system_namespaces_and_coffers() {
        let injection = injection();
        for namespace in ["kube-system", "kube-public", "kube-node-lease", "coffer"] {
            assert!(injection.excludes(namespace), "{namespace}");
        }
        assert!(!injection.excludes("shop"));
        assert!(!injection.excludes(""));
    }

    /// `pod`'s annotations with a proxy `db` (a CA of its own) and no secret.
    fn proxy_pod(spec: Value) -> Value {
        let mut pod = pod(spec);
        pod["metadata"]["annotations"] = json!({
            "coffer.dev/proxy-db": "{protocol: postgres, listen: 127.0.0.1:5432, upstream: db.shop.svc:5432, path: shop/pg, tls: {caFile: /etc/coffer/ca/db-ca.crt}}",
        });
        pod
    }

    #[test]
    fn a_proxy_alone_gets_a_sidecar_which_sees_the_ca_it_names() {
        let pod = patched(
            proxy_pod(json!({"containers": [{"name": "web"}]})),
            SidecarMode::Native,
        );
        let config: Value = serde_norway::from_str(
            pod["metadata"]["annotations"][CONFIG_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(config["proxies"][0]["name"], "db");
        assert_eq!(config["secrets"], json!([]));
        let ca = list(&pod, "volumes")
            .iter()
            .find(|v| v["name"] == "coffer-ca")
            .unwrap();
        assert_eq!(
            ca["configMap"]["items"],
            json!([{"key": "ca.crt", "path": "ca.crt"}, {"key": "db-ca.crt", "path": "db-ca.crt"}])
        );
    }

    #[test]
    fn a_proxy_in_init_only_mode_is_refused() {
        let error = patch_of(
            &proxy_pod(json!({"containers": [{"name": "web"}]})),
            &in_mode(SidecarMode::InitOnly),
        )
        .unwrap_err();
        assert!(error.to_string().contains("a proxy"), "{error}");
        assert!(error.to_string().contains(SIDECAR_MODE), "{error}");
    }
}
