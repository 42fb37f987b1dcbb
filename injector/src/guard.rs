//! What may change in a pod after injection.
//!
//! The sidecar reads its configuration from the annotation
//! `coffer.dev/sidecar-config` through the downward API, and reads it again
//! whenever it restarts; Kubernetes lets anyone allowed to `patch pods`
//! change annotations and labels, the images of containers, and (through
//! the `pods/ephemeralcontainers` subresource) add ephemeral containers,
//! which may mount any volume of the pod. So an UPDATE of an injected pod
//! (one carrying `coffer.dev/injected`) is refused when it
//!
//! - adds, changes or removes a `coffer.dev/` annotation or label (the
//!   configuration, the per-secret annotations it came from, the marker,
//!   and `coffer.dev/inject`, without which later updates would not reach
//!   the webhook at all);
//! - changes a container or a volume the injector added (the sidecar's
//!   image above all);
//! - gives the pod an ephemeral container that mounts a volume the injector
//!   added (the token, the files) or joins the sidecar's processes
//!   (`targetContainerName`).
//!
//! Every other update is allowed unchanged. A pod that was not injected is
//! not guarded: it has nothing of the injector's.

use std::collections::BTreeMap;

use crate::{
    patch::{CONTAINERS, INJECTED_ANNOTATION},
    pod::{Pod, VOLUMES},
};

/// Why an update of an injected pod is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// A `coffer.dev/` annotation was added, changed or removed.
    #[error(
        "the annotation {0} of a pod with an injected sidecar cannot change (the sidecar reads its \
         configuration from the pod's annotations): change the pod template, and new pods get the \
         new annotations"
    )]
    Annotation(String),
    /// A `coffer.dev/` label was added, changed or removed.
    #[error(
        "the label {0} of a pod with an injected sidecar cannot change: change the pod template \
         instead"
    )]
    Label(String),
    /// A container the injector added was changed.
    #[error(
        "the injected container {0:?} cannot change (it holds the pod's Coffer token): change the \
         pod template, and new pods get a new sidecar"
    )]
    Container(&'static str),
    /// A volume the injector added was changed.
    #[error("the injected volume {0:?} cannot change")]
    Volume(&'static str),
    /// An ephemeral container mounts a volume the injector added.
    #[error(
        "the ephemeral container {container:?} may not mount {volume:?}: the injected volumes hold \
         the sidecar's token and the secrets, for the sidecar and the app alone"
    )]
    EphemeralMount {
        /// The ephemeral container.
        container: String,
        /// The volume it mounts.
        volume: &'static str,
    },
    /// An ephemeral container targets a container the injector added.
    #[error(
        "the ephemeral container {container:?} may not target {target:?}: the sidecar's processes \
         hold the pod's Coffer token and secrets; debug the app's container instead"
    )]
    EphemeralTarget {
        /// The ephemeral container.
        container: String,
        /// The injected container it targets.
        target: &'static str,
    },
    /// The pod's annotations are over Kubernetes' limit, so they cannot all
    /// be compared.
    #[error("the pod's annotations are over Kubernetes' limit of 262144 bytes")]
    AnnotationsTooLarge,
}

/// Checks an UPDATE from `old` to `new` (see the module docs).
pub fn check_update(old: &Pod<'_>, new: &Pod<'_>) -> Result<(), GuardError> {
    if !old.annotations().contains_key(INJECTED_ANNOTATION) {
        return Ok(());
    }
    if old.annotations().over_budget() || new.annotations().over_budget() {
        return Err(GuardError::AnnotationsTooLarge);
    }
    if let Some(key) = first_difference(old.annotations().coffer(), new.annotations().coffer()) {
        return Err(GuardError::Annotation(key));
    }
    if let Some(key) = first_difference(coffer_labels(old), coffer_labels(new)) {
        return Err(GuardError::Label(key));
    }
    for name in CONTAINERS {
        let raw = |pod: &Pod<'_>| {
            pod.all_containers()
                .filter(|c| c.name() == name)
                .map(|c| c.raw.get().to_string())
                .collect::<Vec<_>>()
        };
        if raw(old) != raw(new) {
            return Err(GuardError::Container(name));
        }
    }
    for name in VOLUMES {
        let raw = |pod: &Pod<'_>| {
            pod.spec
                .as_ref()
                .and_then(|s| s.volumes.as_deref())
                .unwrap_or_default()
                .iter()
                .filter(|v| v.name.as_deref() == Some(name))
                .map(|v| v.raw.get().to_string())
                .collect::<Vec<_>>()
        };
        if raw(old) != raw(new) {
            return Err(GuardError::Volume(name));
        }
    }
    check_ephemeral(new)
}

/// Refuses ephemeral containers that mount an injected volume or target an
/// injected container.
fn check_ephemeral(pod: &Pod<'_>) -> Result<(), GuardError> {
    for container in pod.ephemeral() {
        if let Some(volume) = container
            .volume_mounts
            .as_ref()
            .and_then(|m| m.injected.first())
        {
            return Err(GuardError::EphemeralMount {
                container: container.name().to_string(),
                volume,
            });
        }
        if let Some(target) = CONTAINERS
            .into_iter()
            .find(|c| container.target_container_name.as_deref() == Some(*c))
        {
            return Err(GuardError::EphemeralTarget {
                container: container.name().to_string(),
                target,
            });
        }
    }
    Ok(())
}

fn coffer_labels<'p>(pod: &'p Pod<'_>) -> impl Iterator<Item = (&'p str, &'p str)> {
    pod.coffer_labels().iter().map(|(k, v)| (&**k, &**v))
}

/// The first key whose entry differs between two maps (present in one
/// only, or with another value).
fn first_difference<'a>(
    old: impl Iterator<Item = (&'a str, &'a str)>,
    new: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let old: BTreeMap<&str, &str> = old.collect();
    let new: BTreeMap<&str, &str> = new.collect();
    old.keys()
        .chain(new.keys())
        .find(|key| old.get(*key) != new.get(*key))
        .map(|key| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn injected() -> Value {
        json!({
            "metadata": {
                "labels": {"app": "web", "coffer.dev/inject": "true", "coffer.dev/client": "true"},
                "annotations": {"coffer.dev/injected": "true", "coffer.dev/sidecar-config": "broker: x\n"},
            },
            "spec": {
                "initContainers": [{"name": "coffer-sidecar", "image": "coffer/sidecar:1"}],
                "containers": [{"name": "web", "image": "web:1"}],
                "volumes": [{"name": "coffer-token", "projected": {}}],
            },
        })
    }

    fn check(old: &Value, new: &Value) -> Result<(), GuardError> {
        let (old, new) = (old.to_string(), new.to_string());
        check_update(&Pod::parse(&old).unwrap(), &Pod::parse(&new).unwrap())
    }

    #[test]
    fn an_unchanged_pod_passes() {
        assert_eq!(check(&injected(), &injected()), Ok(()));
    }

    #[test]
    fn the_differences_are_named() {
        let old = injected();
        let mut new = old.clone();
        new["metadata"]["annotations"]["coffer.dev/sidecar-config"] = json!("broker: y\n");
        assert_eq!(
            check(&old, &new),
            Err(GuardError::Annotation("coffer.dev/sidecar-config".into()))
        );
        let mut new = old.clone();
        new["metadata"]["labels"]["coffer.dev/client"] = json!("false");
        assert_eq!(
            check(&old, &new),
            Err(GuardError::Label("coffer.dev/client".into()))
        );
        let mut new = old.clone();
        new["spec"]["initContainers"][0]["image"] = json!("evil:1");
        assert_eq!(
            check(&old, &new),
            Err(GuardError::Container("coffer-sidecar"))
        );
        let mut new = old.clone();
        new["spec"]["volumes"][0]["projected"] = json!({"sources": []});
        assert_eq!(check(&old, &new), Err(GuardError::Volume("coffer-token")));
    }

    #[test]
    fn a_pod_that_was_not_injected_is_not_guarded() {
        let mut old = injected();
        old["metadata"]["annotations"] = json!({});
        let mut new = old.clone();
        new["metadata"]["annotations"]["coffer.dev/sidecar-config"] = json!("anything");
        assert_eq!(check(&old, &new), Ok(()));
    }
}
