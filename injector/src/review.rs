//! AdmissionReview v1: request in, response out.

use base64::Engine;
use serde_json::{Value, json};

use crate::patch::{Injection, patch};

/// Answers an AdmissionReview request body. A body that is not an
/// AdmissionReview gets `Err` (HTTP 400); a pod in an excluded namespace is
/// allowed unchanged before anything else is looked at; a pod that cannot be
/// injected gets `allowed: false` with the reason.
pub fn review(body: &[u8], injection: &Injection) -> Result<Value, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err("expected an admission.k8s.io/v1 AdmissionReview".into());
    }
    let request = &review["request"];
    let uid = request["uid"]
        .as_str()
        .ok_or("request.uid is missing")?
        .to_string();
    let object = &request["object"];
    let namespace = request["namespace"]
        .as_str()
        .or(object["metadata"]["namespace"].as_str())
        .unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .or(object["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    let response = if request["kind"]["kind"] != "Pod" || object.is_null() {
        json!({"uid": uid, "allowed": true})
    } else if injection.excludes(namespace) {
        // The webhook's namespaceSelector keeps these pods away only where
        // the API server labels namespaces with kubernetes.io/metadata.name
        // (1.21+); this check is what holds on older clusters.
        tracing::info!(
            namespace,
            pod = name,
            "namespace excluded from injection; pod allowed unchanged"
        );
        json!({"uid": uid, "allowed": true})
    } else {
        match patch(object, injection) {
            Ok(None) => json!({"uid": uid, "allowed": true}),
            Ok(Some(patch)) => {
                tracing::info!(namespace, pod = name, mode = %patch.mode, "sidecar injected");
                let patch = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&patch.ops).map_err(|e| e.to_string())?);
                json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
            }
            Err(error) => {
                tracing::info!(namespace, pod = name, %error, "pod refused");
                json!({"uid": uid, "allowed": false, "status": {
                    "code": 422,
                    "reason": "Invalid",
                    "message": format!("coffer-injector: {error}"),
                }})
            }
        }
    };
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
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
