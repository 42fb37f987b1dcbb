//! Verifying Kubernetes projected service-account tokens against a JWKS.
//!
//! The order is fixed: size limits, then the header (algorithm and `kid`
//! only), then the signature, and only then the claims. Only asymmetric
//! algorithms are accepted, so a public key can never double as an HMAC secret.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use serde::{Deserialize, Serialize};

use super::{AuthError, Authenticator, BearerToken, MAX_TOKEN_BYTES, WorkloadIdentity};

/// The algorithms a Kubernetes issuer may use. No `none`, no HMAC.
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

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

/// `aud` is a string or a list of strings.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn is_empty(&self) -> bool {
        match self {
            Self::None => true,
            Self::One(_) => false,
            Self::Many(v) => v.is_empty(),
        }
    }
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
            let h: String = digest.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One verification key.
struct VerifyingKey {
    key: DecodingKey,
    /// The algorithms this key may verify.
    algorithms: Vec<Algorithm>,
}

/// The keys of one issuer, by `kid`.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    without_kid: Vec<VerifyingKey>,
}

/// Why a key set could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeySetError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JWKS key {index} cannot be used: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("JWKS holds no usable signing key")]
    Empty,
}

impl KeySet {
    /// Parses a JWKS document. Symmetric and encryption keys are refused.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeySetError> {
        let set: JwkSet = serde_json::from_slice(json)?;
        let mut keys = Self::default();
        for (index, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let bad = |reason: &str| KeySetError::BadKey {
                index,
                reason: reason.to_string(),
            };
            let algorithms = algorithms_for(jwk).map_err(bad)?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(&e.to_string()))?;
            let entry = VerifyingKey { key, algorithms };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), entry);
                }
                None => keys.without_kid.push(entry),
            }
        }
        if keys.by_kid.is_empty() && keys.without_kid.is_empty() {
            return Err(KeySetError::Empty);
        }
        Ok(keys)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            // A token without a kid is matched only when exactly one key fits.
            None => {
                let mut fitting = self
                    .without_kid
                    .iter()
                    .chain(self.by_kid.values())
                    .filter(|k| k.algorithms.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Some(key),
                    _ => None,
                }
            }
        }
    }
}

fn algorithms_for(jwk: &Jwk) -> Result<Vec<Algorithm>, &'static str> {
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported curve"),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not allowed"),
        AlgorithmParameters::OctetKeyPair(_) => return Err("EdDSA keys are not supported"),
    };
    match jwk.common.key_algorithm {
        None => Ok(family),
        Some(declared) => {
            let declared = match declared {
                KeyAlgorithm::RS256 => Algorithm::RS256,
                KeyAlgorithm::RS384 => Algorithm::RS384,
                KeyAlgorithm::RS512 => Algorithm::RS512,
                KeyAlgorithm::PS256 => Algorithm::PS256,
                KeyAlgorithm::ES256 => Algorithm::ES256,
                KeyAlgorithm::ES384 => Algorithm::ES384,
                _ => return Err("declared algorithm is not allowed"),
            };
            if family.contains(&declared) {
                Ok(vec![declared])
            } else {
                Err("declared algorithm does not match the key type")
            }
        }
    }
}

/// Settings for one trusted issuer.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The exact `iss` expected.
    pub issuer: String,
    /// The broker's audiences; `aud` must contain one of them.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// The longest `exp - iat` accepted, if set.
    pub max_lifetime: Option<Duration>,
}

impl VerifierConfig {
    /// An issuer and one audience, with the default leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            leeway: DEFAULT_LEEWAY,
            max_lifetime: None,
        }
    }
}

/// Verifies tokens of one issuer against its key set.
pub struct JwtVerifier {
    config: VerifierConfig,
    keys: Arc<KeySet>,
}

impl JwtVerifier {
    /// A verifier with a fixed key set.
    pub fn new(config: VerifierConfig, keys: KeySet) -> Self {
        Self {
            config,
            keys: Arc::new(keys),
        }
    }

    /// Verifies `token` and derives the caller's identity.
    pub fn verify(&self, token: &str) -> Result<WorkloadIdentity, AuthError> {
        verify_with(&self.config, &self.keys, token)
    }
}

#[async_trait]
impl Authenticator for JwtVerifier {
    async fn authenticate(&self, token: &BearerToken) -> Result<WorkloadIdentity, AuthError> {
        self.verify(token.expose())
    }
}

/// The whole check: sizes, header, signature, then claims.
pub fn verify_with(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
) -> Result<WorkloadIdentity, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    if token.split('.').count() != 3 {
        return Err(AuthError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return Err(AuthError::DisallowedAlgorithm);
    }
    let key = keys
        .find(header.kid.as_deref(), header.alg)
        .ok_or(AuthError::UnknownKey)?;
    if !key.algorithms.contains(&header.alg) {
        return Err(AuthError::DisallowedAlgorithm);
    }

    let mut validation = Validation::new(header.alg);
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&config.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);

    // `decode` checks the signature before it deserializes any claim.
    let claims = jsonwebtoken::decode::<ProjectedClaims>(token, &key.key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::MissingAudience,
            ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
                "exp" => "exp",
                "iss" => "iss",
                _ => "sub",
            }),
            ErrorKind::InvalidAlgorithm => AuthError::DisallowedAlgorithm,
            ErrorKind::Json(_) => AuthError::InvalidClaims,
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
            _ => AuthError::Malformed,
        })?
        .claims;

    let now = unix_now();
    let leeway = config.leeway.as_secs();
    if claims.iat > now + leeway {
        return Err(AuthError::IssuedInFuture);
    }
    if let Some(max) = config.max_lifetime
        && claims.exp.saturating_sub(claims.iat) > max.as_secs()
    {
        return Err(AuthError::LifetimeTooLong);
    }
    let k8s = claims.kubernetes;
    let expected_sub = format!(
        "system:serviceaccount:{}:{}",
        k8s.namespace, k8s.serviceaccount.name
    );
    if claims.sub != expected_sub {
        return Err(AuthError::SubjectMismatch);
    }
    Ok(WorkloadIdentity {
        issuer: claims.iss,
        namespace: k8s.namespace,
        service_account: k8s.serviceaccount.name,
        service_account_uid: Some(k8s.serviceaccount.uid),
        pod_name: k8s.pod.as_ref().map(|p| p.name.clone()),
        pod_uid: k8s.pod.map(|p| p.uid),
    })
}
