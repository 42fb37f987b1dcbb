//! What a token says, read WITHOUT verifying it: its header (`alg`, `kid`)
//! and claims (`iss`, `aud`, `sub`, the times, the `kubernetes.io` names),
//! for showing an operator (`cofferctl token verify`). Never for deciding
//! who a caller is: that is [`super::jwt::JwtVerifier::verify`]'s job alone.
//!
//! The same size limits apply as for verification. Nothing here holds the
//! token or its signature, so the result may be printed.

use serde_json::Value;

use super::{
    AuthError,
    jwt::{decode_part, split},
};

/// A token's header and claims as written, unverified. A member that is
/// absent or of another type than expected is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unverified {
    /// The header's `alg`.
    pub alg: Option<String>,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// Whether the claims part could be read as a JSON object.
    pub claims_readable: bool,
    /// `iss`.
    pub iss: Option<String>,
    /// `sub`.
    pub sub: Option<String>,
    /// `aud`, a string or a list (empty when absent).
    pub aud: Vec<String>,
    /// `exp`, Unix seconds.
    pub exp: Option<u64>,
    /// `iat`, Unix seconds.
    pub iat: Option<u64>,
    /// `nbf`, Unix seconds.
    pub nbf: Option<u64>,
    /// `kubernetes.io.namespace`.
    pub namespace: Option<String>,
    /// `kubernetes.io.serviceaccount`.
    pub service_account: Option<NamedObject>,
    /// `kubernetes.io.pod`.
    pub pod: Option<NamedObject>,
    /// `kubernetes.io.node`.
    pub node: Option<NamedObject>,
}

/// A Kubernetes object as a token names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedObject {
    /// Its name.
    pub name: Option<String>,
    /// Its uid.
    pub uid: Option<String>,
}

/// Reads `token`'s header and claims without verifying anything. Fails
/// only when the token is not three parts within the size limits; a part
/// that does not decode leaves its fields `None`.
pub fn read_unverified(token: &str) -> Result<Unverified, AuthError> {
    let parts = split(token)?;
    let json = |part: &str| -> Option<Value> {
        let bytes = decode_part(part).ok()?;
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .filter(Value::is_object)
    };
    let mut out = Unverified::default();
    if let Some(header) = json(parts.header) {
        out.alg = string(&header, "alg");
        out.kid = string(&header, "kid");
    }
    if let Some(claims) = json(parts.payload) {
        out.claims_readable = true;
        out.iss = string(&claims, "iss");
        out.sub = string(&claims, "sub");
        out.aud = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        out.exp = claims.get("exp").and_then(Value::as_u64);
        out.iat = claims.get("iat").and_then(Value::as_u64);
        out.nbf = claims.get("nbf").and_then(Value::as_u64);
        if let Some(k8s) = claims.get("kubernetes.io") {
            out.namespace = string(k8s, "namespace");
            out.service_account = object(k8s, "serviceaccount");
            out.pod = object(k8s, "pod");
            out.node = object(k8s, "node");
        }
    }
    Ok(out)
}

fn string(value: &Value, key: &str) -> Option<String> {
    value.get(key)?.as_str().map(str::to_string)
}

fn object(value: &Value, key: &str) -> Option<NamedObject> {
    let object = value.get(key).filter(|v| v.is_object())?;
    Some(NamedObject {
        name: string(object, "name"),
        uid: string(object, "uid"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::{jwt::ProjectedClaims, signer::DevSigner};

    #[test]
    fn a_projected_token_reads_as_its_claims_and_header() {
        let signer = DevSigner::generate("https://issuer.test").unwrap();
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-0"),
                Duration::from_secs(600),
            )
            .unwrap();
        let read = read_unverified(&token).unwrap();
        assert_eq!(read.iss.as_deref(), Some("https://issuer.test"));
        assert_eq!(read.sub.as_deref(), Some("system:serviceaccount:shop:web"));
        assert_eq!(read.aud, ["coffer"]);
        assert_eq!(read.namespace.as_deref(), Some("shop"));
        assert_eq!(
            read.service_account.and_then(|s| s.name).as_deref(),
            Some("web")
        );
        assert_eq!(read.pod.and_then(|p| p.name).as_deref(), Some("web-0"));
        let (iat, exp) = (read.iat.unwrap(), read.exp.unwrap());
        assert_eq!(exp - iat, 600);
        assert!(read.alg.is_some() && read.kid.is_some());
    }

    #[test]
    fn a_list_audience_is_read_whole() {
        let mut claims = ProjectedClaims::projected(
            "https://i",
            "coffer",
            "shop",
            "web",
            None,
            Duration::from_secs(60),
        );
        claims.aud = crate::auth::jwt::Audience::Many(vec!["a".into(), "b".into()]);
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&claims).unwrap(),
        );
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none"}"#,
        );
        let read = read_unverified(&format!("{header}.{payload}.")).unwrap();
        assert_eq!(read.aud, ["a", "b"]);
        assert_eq!(read.alg.as_deref(), Some("none"));
        assert_eq!(read.kid, None);
    }

    #[test]
    fn unreadable_parts_leave_their_fields_empty() {
        let read = read_unverified("e30.!!!.sig").unwrap();
        assert!(!read.claims_readable);
        assert_eq!(read.iss, None);
        assert_eq!(read_unverified("not-a-jwt"), Err(AuthError::Malformed));
    }
}
