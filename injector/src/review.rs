//! AdmissionReview v1: request in, response out.

use base64::Engine;
use serde_json::{Value, json};

use crate::patch::{Injection, patch};

/// Answers an AdmissionReview request body. A body that is not an
/// AdmissionReview gets `Err` (HTTP 400); a pod that cannot be injected gets
/// `allowed: false` with the reason.
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
    let namespace = request["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"]
        .as_str()
        .or(object["metadata"]["generateName"].as_str())
        .unwrap_or_default();
    let response = if request["kind"]["kind"] != "Pod" || object.is_null() {
        json!({"uid": uid, "allowed": true})
    } else {
        match patch(object, injection) {
            Ok(None) => json!({"uid": uid, "allowed": true}),
            Ok(Some(ops)) => {
                tracing::info!(namespace, pod = name, "sidecar injected");
                let patch = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(&ops).map_err(|e| e.to_string())?);
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
