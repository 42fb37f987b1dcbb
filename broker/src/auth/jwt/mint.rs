//! Tokens shaped exactly as the kubelet's projected service-account tokens
//! are, signed with a key the caller holds: the minting half the broker
//! itself never uses to decide anything.
//!
//! `coffer-broker dev` mints its demo tokens at run time through
//! [`crate::auth::signer::DevSigner`], so these types are always compiled.
//! Only with the `testing` feature are they public: tests, benches and the
//! load generator tamper with claims and sign with fixture or foreign keys,
//! which the shipped broker has no business offering (see `super`).

use std::time::Duration;

use data_encoding::HEXLOWER;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use super::claims::{Audience, unix_now};

/// The claims of a projected service-account token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectedClaims {
    pub iss: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Audience::is_empty")]
    pub aud: Audience,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The `kubernetes.io` claim. Unknown members are ignored: newer clusters add
/// some (e.g. `node`, `credential-id`), and the ones read here are signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<u64>,
}

/// A named Kubernetes object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

impl ProjectedClaims {
    /// Claims shaped exactly as the kubelet's projected tokens are, valid
    /// from now for `ttl`. Used by the dev command and by tests.
    pub fn projected(
        issuer: &str,
        audience: &str,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        ttl: Duration,
    ) -> Self {
        let now = unix_now();
        let uid = |kind: &str, name: &str| {
            // Deterministic, uid-shaped identifiers are enough for minted tokens.
            let digest = ring::digest::digest(
                &ring::digest::SHA256,
                format!("{kind}/{namespace}/{name}").as_bytes(),
            );
            let h = HEXLOWER.encode(&digest.as_ref()[..16]);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        Self {
            iss: issuer.to_string(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: Audience::Many(vec![audience.to_string()]),
            exp: now + ttl.as_secs(),
            iat: now,
            nbf: Some(now),
            kubernetes: KubernetesClaims {
                namespace: namespace.to_string(),
                serviceaccount: ObjectRef {
                    name: service_account.to_string(),
                    uid: uid("sa", service_account),
                },
                pod: pod.map(|p| ObjectRef {
                    name: p.to_string(),
                    uid: uid("pod", p),
                }),
                node: None,
                secret: None,
                warnafter: None,
            },
        }
    }

    /// Signs these claims. Callers hold the private key; the broker never does.
    pub fn sign(
        &self,
        algorithm: Algorithm,
        kid: &str,
        key: &EncodingKey,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, self, key)
    }
}
