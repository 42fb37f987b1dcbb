//! The pod-level `coffer.dev/` annotations that shape the patch rather than
//! the sidecar's configuration (vault-k8s's counterparts in brackets):
//!
//! | annotation | meaning |
//! | ---------- | ------- |
//! | `coffer.dev/containers: web,worker` | only these containers mount the files (`agent-inject-containers`) |
//! | `coffer.dev/mount-path: /vault/secrets` | where the app containers mount the files (`secret-volume-path`) |
//! | `coffer.dev/mount-path-<name>: /etc/db` | the app containers also mount the files there (`secret-volume-path-<name>`) |
//! | `coffer.dev/run-as-user`, `coffer.dev/run-as-group` | the sidecar's uid (not 0) and gid (`agent-run-as-user`, `-group`) |
//! | `coffer.dev/share-process-namespace: "true"` | the pod's `shareProcessNamespace`, for `processName` actions (`agent-share-process-namespace`) |
//! | `coffer.dev/sidecar-limits-cpu`, `-memory`, `-ephemeral-storage`, and `sidecar-requests-…` | the sidecar's resources (`agent-limits-*`, `agent-requests-*`) |
//!
//! A pod whose every container has equal CPU and memory requests and limits
//! is Guaranteed; the sidecar's requests are then set to its limits so that
//! it stays so.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::{
    annotations::AnnotationError,
    pod::{Annotations, Container, Pod, Raw},
};

/// The pod-level annotations these options read.
pub const POD_KEYS: [&str; 11] = [
    "containers",
    "mount-path",
    "run-as-user",
    "run-as-group",
    "share-process-namespace",
    "sidecar-limits-cpu",
    "sidecar-limits-memory",
    "sidecar-limits-ephemeral-storage",
    "sidecar-requests-cpu",
    "sidecar-requests-memory",
    "sidecar-requests-ephemeral-storage",
];

/// The options of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOptions {
    /// The containers that mount the files (`None`: all).
    pub containers: Option<Vec<String>>,
    /// Where the app containers mount the files (`None`: the layout's).
    pub mount_path: Option<String>,
    /// More directories the files are mounted at, by secret.
    pub extra_mounts: BTreeMap<String, String>,
    /// The sidecar's uid.
    pub run_as_user: Option<i64>,
    /// The sidecar's gid.
    pub run_as_group: Option<i64>,
    /// `shareProcessNamespace`.
    pub share_process_namespace: Option<bool>,
    /// `limits` by resource name.
    pub limits: BTreeMap<String, String>,
    /// `requests` by resource name.
    pub requests: BTreeMap<String, String>,
}

fn bad(annotation: &str, reason: &str) -> AnnotationError {
    AnnotationError::BadValue {
        annotation: annotation.to_string(),
        reason: reason.to_string(),
    }
}

fn directory(key: &str, value: &str) -> Result<String, AnnotationError> {
    if value.starts_with('/') && !value.split('/').any(|p| p == "..") && !value.contains(':') {
        Ok(value.to_string())
    } else {
        Err(bad(
            key,
            "expected an absolute directory path without \"..\"",
        ))
    }
}

impl PodOptions {
    /// Reads the options from the (translated) annotations.
    pub fn parse(annotations: &Annotations<'_>) -> Result<Self, AnnotationError> {
        let mut options = Self::default();
        for (key, value) in annotations.iter() {
            let Some(name) = key.strip_prefix("coffer.dev/") else {
                continue;
            };
            match name {
                "containers" => {
                    options.containers = Some(
                        value
                            .split(',')
                            .map(|n| n.trim().to_string())
                            .filter(|n| !n.is_empty())
                            .collect(),
                    );
                }
                "mount-path" => options.mount_path = Some(directory(key, value)?),
                "run-as-user" | "run-as-group" => {
                    let id: i64 = value
                        .parse()
                        .map_err(|_| bad(key, "expected a numeric id"))?;
                    if id < 0 || (id == 0 && name == "run-as-user") {
                        return Err(bad(
                            key,
                            "expected a non-root id: the sidecar never runs as root",
                        ));
                    }
                    if name == "run-as-user" {
                        options.run_as_user = Some(id);
                    } else {
                        options.run_as_group = Some(id);
                    }
                }
                "share-process-namespace" => {
                    options.share_process_namespace = Some(
                        value
                            .parse()
                            .map_err(|_| bad(key, "expected \"true\" or \"false\""))?,
                    );
                }
                _ => {
                    if let Some(secret) = name.strip_prefix("mount-path-") {
                        options
                            .extra_mounts
                            .insert(secret.to_string(), directory(key, value)?);
                    } else if let Some(resource) = name.strip_prefix("sidecar-limits-") {
                        options
                            .limits
                            .insert(resource.to_string(), value.to_string());
                    } else if let Some(resource) = name.strip_prefix("sidecar-requests-") {
                        options
                            .requests
                            .insert(resource.to_string(), value.to_string());
                    }
                }
            }
        }
        Ok(options)
    }

    /// The directories the app containers mount the files at.
    pub fn mount_paths(&self, default: &str) -> Vec<String> {
        let mut paths = vec![
            self.mount_path
                .clone()
                .unwrap_or_else(|| default.to_string()),
        ];
        for path in self.extra_mounts.values() {
            if !paths.contains(path) {
                paths.push(path.clone());
            }
        }
        paths
    }
}

impl PodOptions {
    /// The JSONPatch operations mounting the files, read-only, in the app
    /// containers `containers` (the pod's own, before any is inserted).
    pub fn mount_ops(
        &self,
        containers: &[Raw<'_, Container<'_>>],
        default: &str,
    ) -> Result<Vec<Value>, AnnotationError> {
        if let Some(wanted) = &self.containers {
            for name in wanted {
                if !containers.iter().any(|c| c.name() == name) {
                    return Err(bad(
                        "coffer.dev/containers",
                        &format!("the pod has no container {name:?}"),
                    ));
                }
            }
        }
        let mounts: Vec<Value> = self
            .mount_paths(default)
            .into_iter()
            .map(|path| json!({"name": "coffer-secrets", "mountPath": path, "readOnly": true}))
            .collect();
        let mut ops = Vec::new();
        for (i, container) in containers.iter().enumerate() {
            if self
                .containers
                .as_ref()
                .is_some_and(|w| !w.iter().any(|n| n == container.name()))
            {
                continue;
            }
            if container.volume_mounts.is_some() {
                for mount in &mounts {
                    ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts/-"), "value": mount}));
                }
            } else {
                ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts"), "value": mounts}));
            }
        }
        Ok(ops)
    }

    /// Sets an added container's group and resources. In a Guaranteed pod
    /// the requests are the limits.
    pub fn shape(&self, container: &mut Value, guaranteed: bool) {
        if let Some(gid) = self.run_as_group {
            container["securityContext"]["runAsGroup"] = json!(gid);
        }
        for (resource, value) in &self.limits {
            container["resources"]["limits"][resource] = json!(value);
        }
        for (resource, value) in &self.requests {
            container["resources"]["requests"][resource] = json!(value);
        }
        if guaranteed {
            container["resources"]["requests"] = container["resources"]["limits"].clone();
        }
    }
}

/// Whether every container of the pod has CPU and memory limits, and
/// requests equal to them (or none, which default to the limits): the pod's
/// QoS class is Guaranteed. Only each container's `resources` is parsed
/// (the rest of its JSON, which may be megabytes, is skipped unstored).
pub fn guaranteed(pod: &Pod<'_>) -> bool {
    #[derive(serde::Deserialize)]
    struct Resources<'a> {
        #[serde(borrow, default)]
        resources: Option<&'a serde_json::value::RawValue>,
    }
    let Some(spec) = &pod.spec else { return false };
    let containers: Vec<&Raw<'_, Container<'_>>> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter())
        .flat_map(|c| c.iter())
        .collect();
    !containers.is_empty()
        && containers.iter().all(|container| {
            let Ok(Resources {
                resources: Some(raw),
            }) = serde_json::from_str::<Resources<'_>>(container.raw.get())
            else {
                return false;
            };
            let Ok(resources) = serde_json::from_str::<Value>(raw.get()) else {
                return false;
            };
            ["cpu", "memory"].iter().all(|r| {
                let limit = &resources["limits"][r];
                let request = &resources["requests"][r];
                limit.is_string() && (request.is_null() || request == limit)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<PodOptions, AnnotationError> {
        PodOptions::parse(&Annotations::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn reads_every_option() {
        let o = parse(&[
            ("coffer.dev/containers", "web, worker"),
            ("coffer.dev/mount-path", "/vault/secrets"),
            ("coffer.dev/mount-path-db", "/etc/db"),
            ("coffer.dev/run-as-user", "1000"),
            ("coffer.dev/run-as-group", "0"),
            ("coffer.dev/share-process-namespace", "true"),
            ("coffer.dev/sidecar-limits-cpu", "250m"),
            ("coffer.dev/sidecar-requests-memory", "64Mi"),
        ])
        .unwrap();
        assert_eq!(o.containers, Some(vec!["web".into(), "worker".into()]));
        assert_eq!(
            o.mount_paths("/coffer/secrets"),
            ["/vault/secrets", "/etc/db"]
        );
        assert_eq!(
            (o.run_as_user, o.run_as_group, o.share_process_namespace),
            (Some(1000), Some(0), Some(true))
        );
        assert_eq!(o.limits["cpu"], "250m");
        assert_eq!(o.requests["memory"], "64Mi");
    }

    #[test]
    fn refuses_root_and_relative_paths() {
        assert!(parse(&[("coffer.dev/run-as-user", "0")]).is_err());
        assert!(parse(&[("coffer.dev/mount-path", "secrets")]).is_err());
        assert!(parse(&[("coffer.dev/mount-path-db", "/a/../b")]).is_err());
        assert!(parse(&[("coffer.dev/share-process-namespace", "yes")]).is_err());
    }
}
