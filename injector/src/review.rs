//! AdmissionReview v1: request in, response out.
//!
//! The review is read into typed structs that borrow from the body: the
//! object and the old object stay raw JSON until the pod's parts the
//! injector reads are parsed from them (see [`crate::pod`]), so a review
//! costs about its own size in memory, never a document tree of it.
//!
//! - CREATE of a pod: the sidecar is injected ([`crate::patch`]) or the pod
//!   refused with the reason.
//! - UPDATE of a pod, and of its `ephemeralcontainers` subresource: allowed
//!   unchanged unless it changes what the injector added
//!   ([`crate::guard`]).
//! - Anything else, and every pod in an excluded namespace: allowed
//!   unchanged.

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json, value::RawValue};

use crate::{
    guard::check_update,
    patch::{Injection, patch},
    pod::{Pod, Text},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    #[serde(borrow, default)]
    api_version: Option<Text<'a>>,
    #[serde(borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    #[serde(borrow, default)]
    uid: Option<Text<'a>>,
    #[serde(borrow, default)]
    kind: Option<Kind<'a>>,
    #[serde(borrow, default)]
    sub_resource: Option<Text<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Text<'a>>,
    #[serde(borrow, default)]
    operation: Option<Text<'a>>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(borrow, default)]
    kind: Option<Text<'a>>,
}

/// What the injector answers.
enum Answer {
    /// Allowed unchanged.
    Allow,
    /// Allowed with this JSONPatch, and the AdmissionReview warnings.
    Patch(Vec<Value>, Vec<String>),
    /// Refused, with the reason.
    Refuse(String),
}

/// Answers an AdmissionReview request body. A body that is not an
/// AdmissionReview gets `Err` (HTTP 400); a pod in an excluded namespace is
/// allowed unchanged before anything else is looked at; a pod that cannot be
/// injected, or an update the injector guards against, gets
/// `allowed: false` with the reason.
pub fn review(body: &[u8], injection: &Injection) -> Result<Value, String> {
    let review: Review<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    if review.api_version.as_deref() != Some("admission.k8s.io/v1")
        || review.kind.as_deref() != Some("AdmissionReview")
    {
        return Err("expected an admission.k8s.io/v1 AdmissionReview".into());
    }
    let request = review.request.ok_or("request is missing")?;
    let uid = request.uid.as_deref().ok_or("request.uid is missing")?;
    let response = match answer(&request, injection) {
        Answer::Allow => json!({"uid": uid, "allowed": true}),
        Answer::Patch(ops, warnings) => {
            let patch = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&ops).map_err(|e| e.to_string())?);
            let mut response =
                json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch});
            if !warnings.is_empty() {
                // Shown by kubectl apply: each ignored vault-k8s annotation.
                response["warnings"] = json!(warnings);
            }
            response
        }
        Answer::Refuse(message) => json!({"uid": uid, "allowed": false, "status": {
            "code": 422,
            "reason": "Invalid",
            "message": format!("coffer-injector: {message}"),
        }}),
    };
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

fn answer(request: &Request<'_>, injection: &Injection) -> Answer {
    let kind = request.kind.as_ref().and_then(|k| k.kind.as_deref());
    // Before Kubernetes 1.22, the ephemeralcontainers subresource carried
    // an EphemeralContainers object rather than the pod.
    if !matches!(kind, Some("Pod" | "EphemeralContainers")) {
        return Answer::Allow;
    }
    let Some(object) = request.object else {
        return Answer::Allow;
    };
    let pod = match Pod::parse(object.get()) {
        Ok(pod) => pod,
        Err(error) => {
            tracing::info!(%error, "pod refused: unreadable");
            return Answer::Refuse(format!("the pod cannot be read: {error}"));
        }
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or_default();
    let name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    if injection.excludes(namespace) {
        // The webhook's namespaceSelector keeps these pods away only where
        // the API server labels namespaces with kubernetes.io/metadata.name
        // (1.21+); this check is what holds on older clusters.
        tracing::info!(
            namespace,
            pod = name,
            "namespace excluded from injection; pod allowed unchanged"
        );
        return Answer::Allow;
    }
    // The API server always names the operation; a review without one is
    // read as the CREATE it most likely is.
    match request.operation.as_deref().unwrap_or("CREATE") {
        "CREATE" if request.sub_resource.is_none() => match patch(&pod, injection) {
            Ok(None) => Answer::Allow,
            Ok(Some(patch)) => {
                tracing::info!(namespace, pod = name, mode = %patch.mode, port = patch.port, "sidecar injected");
                Answer::Patch(patch.ops, patch.warnings)
            }
            Err(error) => {
                tracing::info!(namespace, pod = name, %error, "pod refused");
                Answer::Refuse(error.to_string())
            }
        },
        "UPDATE" => {
            let Some(old) = request.old_object else {
                return Answer::Refuse("an UPDATE without the old object".into());
            };
            let old = match Pod::parse(old.get()) {
                Ok(old) => old,
                Err(error) => {
                    return Answer::Refuse(format!("the old pod cannot be read: {error}"));
                }
            };
            match check_update(&old, &pod) {
                Ok(()) => Answer::Allow,
                Err(error) => {
                    let sub_resource = request.sub_resource.as_deref().unwrap_or_default();
                    tracing::info!(namespace, pod = name, sub_resource, %error, "update refused");
                    Answer::Refuse(error.to_string())
                }
            }
        }
        _ => Answer::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::{DEFAULT_EXCLUDED_NAMESPACES, test_injection as injection};

    /// An opted-in pod in `namespace`; `annotations` added to a valid set.
    fn request(namespace: &str, annotations: Value) -> Vec<u8> {
        let mut all = json!({"coffer.dev/secret-db": "shop/db#password"});
        all.as_object_mut()
            .unwrap()
            .extend(annotations.as_object().unwrap().clone());
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": namespace,
                "object": {
                    "metadata": {
                        "name": "web",
                        "labels": {"coffer.dev/inject": "true"},
                        "annotations": all,
                    },
                    "spec": {"containers": [{"name": "web"}]},
                },
            },
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_pod_in_an_excluded_namespace_is_allowed_unchanged() {
        for namespace in DEFAULT_EXCLUDED_NAMESPACES {
            let answer = review(&request(namespace, json!({})), &injection()).unwrap();
            assert_eq!(
                answer["response"],
                json!({"uid": "u-1", "allowed": true}),
                "{namespace}"
            );
        }
    }

    #[test]
    fn an_excluded_pod_is_not_refused_for_its_annotations() {
        let body = request("kube-system", json!({"coffer.dev/sidecar-mode": "bogus"}));
        let answer = review(&body, &injection()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
    }

    #[test]
    fn exclusions_are_configurable() {
        let mut injection = injection();
        injection.excluded_namespaces = ["shop".to_string()].into();
        let answer = review(&request("shop", json!({})), &injection).unwrap();
        assert!(answer["response"].get("patch").is_none());
        let answer = review(&request("kube-system", json!({})), &injection).unwrap();
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn a_pod_elsewhere_is_patched() {
        let answer = review(&request("shop", json!({})), &injection()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn an_unknown_mode_is_refused_with_the_annotations_name() {
        let body = request("shop", json!({"coffer.dev/sidecar-mode": "sidecar"}));
        let answer = review(&body, &injection()).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("coffer.dev/sidecar-mode"), "{message}");
        assert!(message.contains("init-only"), "{message}");
    }
}
