//! Verifying Kubernetes projected service-account tokens against a key set.
//!
//! The order is fixed and every step fails with one precise [`AuthError`]:
//! the size of the token and of each part (before any decoding), the header
//! (algorithm and `kid` only), the signature, and only then the claims. Only
//! asymmetric algorithms are accepted, so a public key can never double as an
//! HMAC secret, and keys named inside a token (`jku`, `jwk`, `x5u`) are never
//! used: keys come only from the configured [`KeySource`].

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::{Deserialize, Serialize};

use super::{AuthError, Authenticator, BearerToken, MAX_TOKEN_BYTES, Verified, WorkloadIdentity};

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

/// The largest decoded JOSE header accepted. Kubernetes headers are ~100 bytes.
pub const MAX_HEADER_BYTES: usize = 1024;
/// The largest decoded claims set accepted. Kubernetes claims are ~1 KiB.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;
/// The largest decoded signature accepted: an RSA-8192 signature.
pub const MAX_SIGNATURE_BYTES: usize = 1024;

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
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// Read by hand rather than `untagged`: an untagged enum buffers the value
/// and builds an error for each variant it rejects, which cost more than
/// the rest of the claims together on every cold token. Accepts what the
/// untagged form accepted: `null`, a string, or a list of strings.
impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Audience, E> {
                Ok(Audience::None)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Audience, E> {
                Ok(Audience::None)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience::One(v.to_string()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Audience, E> {
                Ok(Audience::One(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                // A token names a handful of audiences; the claims size
                // limit bounds the list.
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8));
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(Audience::Many(all))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
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

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One verification key.
struct VerifyingKey {
    key: DecodingKey,
    /// The algorithms this key may verify.
    algorithms: Vec<Algorithm>,
    /// SHA-256 of the public key material, to tell whether the key that
    /// verified a cached answer is still in its set.
    fingerprint: KeyFingerprint,
}

/// SHA-256 of a public key's material (not of its `kid`).
pub type KeyFingerprint = [u8; 32];

/// The key that verified a token and the source it came from, so that a
/// cached answer can be dropped once the key leaves the source's set.
#[derive(Clone)]
pub struct KeyBinding {
    fingerprint: KeyFingerprint,
    source: Option<Arc<dyn KeySource>>,
}

impl KeyBinding {
    /// The verifying key's fingerprint.
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    /// Whether the key is still in its source's current set. A binding
    /// without a source (a fixed key set) always is.
    pub fn is_current(&self) -> bool {
        match &self.source {
            None => true,
            Some(source) => source
                .current()
                .is_some_and(|keys| keys.contains_fingerprint(&self.fingerprint)),
        }
    }
}

impl std::fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A public key's digest is not secret; eight bytes identify it.
        let short: String = self.fingerprint[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "KeyBinding({short})")
    }
}

fn sha256(parts: &[&[u8]]) -> KeyFingerprint {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        // Length-prefixed, so that no two splits of the bytes collide.
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn jwk_fingerprint(jwk: &Jwk) -> KeyFingerprint {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => sha256(&[b"RSA", rsa.n.as_bytes(), rsa.e.as_bytes()]),
        AlgorithmParameters::EllipticCurve(ec) => sha256(&[
            b"EC",
            format!("{:?}", ec.curve).as_bytes(),
            ec.x.as_bytes(),
            ec.y.as_bytes(),
        ]),
        // Never reached: these are skipped before fingerprinting.
        AlgorithmParameters::OctetKey(_) | AlgorithmParameters::OctetKeyPair(_) => {
            sha256(&[b"unusable"])
        }
    }
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
    #[error("PEM block {index} is not a usable public key: {reason}")]
    BadPem { index: usize, reason: String },
    #[error("JWKS holds no usable signing key")]
    Empty,
}

/// DER of the curve OIDs, to tell P-256 from P-384 in a SubjectPublicKeyInfo.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of rsaEncryption and id-ecPublicKey.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

impl KeySet {
    /// Parses a JWKS document. A key that cannot verify tokens here
    /// (symmetric, EdDSA, an encryption key, an unsupported curve or
    /// algorithm, malformed material) is skipped with a warning naming only
    /// its position and `kid`, so one odd key in an issuer's set is not an
    /// outage; a set left with no usable key is refused.
    pub fn from_jwks_json(json: &[u8]) -> Result<Self, KeySetError> {
        // Each key is parsed on its own, so that a key of a type this
        // library does not know is skipped rather than failing the set.
        let set: RawJwkSet = serde_json::from_slice(json)?;
        let mut keys = Self::default();
        for (index, raw) in set.keys.into_iter().enumerate() {
            let kid = raw
                .get("kid")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            let usable = serde_json::from_value::<Jwk>(raw)
                .map_err(|_| "not a JWK this broker understands".to_string())
                .and_then(|jwk| usable_key(&jwk).map(|(key, algorithms)| (jwk, key, algorithms)));
            let (jwk, key, algorithms) = match usable {
                Ok(usable) => usable,
                Err(reason) => {
                    // The kid and position only: never the key's material.
                    tracing::warn!(
                        index,
                        kid,
                        reason,
                        "JWKS key skipped: not usable for verification"
                    );
                    continue;
                }
            };
            let entry = VerifyingKey {
                key,
                algorithms,
                fingerprint: jwk_fingerprint(&jwk),
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), entry);
                }
                None => keys.without_kid.push(entry),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::Empty);
        }
        Ok(keys)
    }

    /// Parses PEM `PUBLIC KEY` blocks (RSA, P-256 or P-384), as given to the
    /// API server's `--service-account-key-file`. Each key's `kid` is the one
    /// Kubernetes derives: base64url(SHA-256(DER SubjectPublicKeyInfo)).
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeySetError> {
        use rustls_pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};
        let mut keys = Self::default();
        for (index, der) in SubjectPublicKeyInfoDer::pem_slice_iter(pem).enumerate() {
            let bad = |reason: String| KeySetError::BadPem { index, reason };
            let der = der.map_err(|e| bad(e.to_string()))?;
            let der: &[u8] = der.as_ref();
            // jsonwebtoken takes one PEM block at a time: re-wrap this one.
            let single = format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            );
            let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
            let (key, algorithms) = if contains(OID_RSA) {
                let key =
                    DecodingKey::from_rsa_pem(single.as_bytes()).map_err(|e| bad(e.to_string()))?;
                (
                    key,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                    ],
                )
            } else if contains(OID_EC) {
                let alg = if contains(OID_P256) {
                    Algorithm::ES256
                } else if contains(OID_P384) {
                    Algorithm::ES384
                } else {
                    return Err(bad("unsupported curve".into()));
                };
                let key =
                    DecodingKey::from_ec_pem(single.as_bytes()).map_err(|e| bad(e.to_string()))?;
                (key, vec![alg])
            } else {
                return Err(bad("neither RSA nor EC".into()));
            };
            let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der));
            let fingerprint = sha256(&[b"SPKI", der]);
            keys.by_kid.insert(
                kid,
                VerifyingKey {
                    key,
                    algorithms,
                    fingerprint,
                },
            );
        }
        if keys.is_empty() {
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

    /// Whether the set holds a key with this `kid`.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Whether the set holds a key with this material.
    pub fn contains_fingerprint(&self, fingerprint: &KeyFingerprint) -> bool {
        self.by_kid
            .values()
            .chain(&self.without_kid)
            .any(|k| &k.fingerprint == fingerprint)
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

/// A JWKS whose keys are parsed one by one.
#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// The decoding key and its algorithms, or why this key cannot verify here.
fn usable_key(jwk: &Jwk) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    let algorithms = algorithms_for(jwk).map_err(str::to_string)?;
    // The library's message could quote the material: say only what failed.
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key material".to_string())?;
    Ok((key, algorithms))
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

/// Where a verifier's keys come from: a fixed set, a file reloaded when it
/// changes, or an OIDC issuer's JWKS (see `crate::auth::oidc`).
#[async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The keys to verify with now; `None` when none could be loaded yet.
    fn current(&self) -> Option<Arc<KeySet>>;

    /// A token named a `kid` missing from `current()`. A source that can
    /// fetch again does so here, rate-limited, and returns the new keys.
    async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        None
    }
}

/// A key set that never changes.
pub struct FixedKeys(Arc<KeySet>);

impl FixedKeys {
    /// Wraps `keys`.
    pub fn new(keys: KeySet) -> Self {
        Self(Arc::new(keys))
    }
}

impl KeySource for FixedKeys {
    fn current(&self) -> Option<Arc<KeySet>> {
        Some(self.0.clone())
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
    /// Accept tokens without `aud`. Off by default: audience-less tokens are
    /// the legacy kind that any holder can replay against any service.
    pub allow_missing_audience: bool,
}

impl VerifierConfig {
    /// An issuer and one audience, with the default leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            leeway: DEFAULT_LEEWAY,
            max_lifetime: None,
            allow_missing_audience: false,
        }
    }
}

/// Verifies tokens of one issuer against its key source.
pub struct JwtVerifier {
    config: VerifierConfig,
    keys: Arc<dyn KeySource>,
}

impl JwtVerifier {
    /// A verifier with a fixed key set.
    pub fn new(config: VerifierConfig, keys: KeySet) -> Self {
        Self::with_source(config, Arc::new(FixedKeys::new(keys)))
    }

    /// A verifier whose keys come from `source`.
    pub fn with_source(config: VerifierConfig, source: Arc<dyn KeySource>) -> Self {
        Self {
            config,
            keys: source,
        }
    }

    /// The settings this verifier enforces.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Verifies `token` with the keys at hand (no fetching) and derives the
    /// caller's identity.
    pub fn verify(&self, token: &str) -> Result<WorkloadIdentity, AuthError> {
        let keys = self.keys.current().ok_or(AuthError::KeysUnavailable)?;
        verify_with(&self.config, &keys, token)
    }

    /// The full check, fetching keys again once if the token names an
    /// unknown `kid` and the source allows it. The answer is bound to the
    /// key that verified it (see [`KeyBinding`]).
    pub async fn verify_fetching(&self, token: &str) -> Result<Verified, AuthError> {
        let result = match self.keys.current() {
            Some(keys) => verify_token(&self.config, &keys, token),
            None => Err(AuthError::KeysUnavailable),
        };
        let result = match result {
            Err(AuthError::UnknownKey | AuthError::KeysUnavailable) => {
                match self.keys.refresh_for_unknown_kid().await {
                    Some(keys) => verify_token(&self.config, &keys, token),
                    None => result,
                }
            }
            other => other,
        };
        result.map(|mut verified| {
            if let Some(binding) = verified.key.as_mut() {
                binding.source = Some(Arc::clone(&self.keys));
            }
            verified
        })
    }
}

#[async_trait]
impl Authenticator for JwtVerifier {
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        self.verify_fetching(token.expose()).await
    }

    fn issuers(&self) -> Vec<String> {
        vec![self.config.issuer.clone()]
    }
}

/// The whole check: sizes, header, signature, then claims.
pub fn verify_with(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
) -> Result<WorkloadIdentity, AuthError> {
    verify_token(config, keys, token).map(|verified| verified.identity)
}

/// The JOSE header. Only `alg` and `kid` are used; `crit` is refused because
/// no extension is understood; `jku`, `jwk`, `x5u` and `x5c` are ignored.
/// Borrowed from the decoded bytes: no allocation per token.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims as found, each optional so a missing one has its own reason.
/// `iss` and `sub` are only compared, so they borrow from the payload.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(default, borrow)]
    iss: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    sub: Option<Cow<'a, str>>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default, rename = "kubernetes.io", borrow)]
    kubernetes: Option<RawKubernetes<'a>>,
}

/// [`KubernetesClaims`] as read for verification: the names borrow from the
/// payload and are copied only into the identity. Same shape, same checks:
/// unknown members are ignored, the known ones must be well-formed.
#[derive(Deserialize)]
struct RawKubernetes<'a> {
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    #[serde(borrow)]
    serviceaccount: RawRef<'a>,
    #[serde(default, borrow)]
    pod: Option<RawRef<'a>>,
    // Not used, but a token whose `node`, `secret` or `warnafter` has the
    // wrong shape is still refused, as before.
    #[serde(default, borrow, rename = "node")]
    _node: Option<RawRef<'a>>,
    #[serde(default, borrow, rename = "secret")]
    _secret: Option<RawRef<'a>>,
    #[serde(default, rename = "warnafter")]
    _warnafter: Option<u64>,
}

/// [`ObjectRef`], borrowed.
#[derive(Deserialize)]
struct RawRef<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    uid: Cow<'a, str>,
}

/// The three parts of a compact JWS, size-checked but not decoded.
pub(super) struct Parts<'a> {
    pub(super) header: &'a str,
    pub(super) payload: &'a str,
    signature: &'a str,
}

/// The longest base64url text that decodes to at most `bytes` bytes.
const fn encoded_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

pub(super) fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if header.len() > encoded_len(MAX_HEADER_BYTES)
        || payload.len() > encoded_len(MAX_PAYLOAD_BYTES)
        || signature.len() > encoded_len(MAX_SIGNATURE_BYTES)
    {
        return Err(AuthError::TooLarge);
    }
    // An empty signature is left to the signature check, so that an
    // `alg: none` token is refused for its algorithm, the precise reason.
    if header.is_empty() || payload.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(Parts {
        header,
        payload,
        signature,
    })
}

pub(super) fn decode_part(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)
}

fn algorithm(name: &str) -> Result<Algorithm, AuthError> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        // `none`, HMAC, EdDSA, PS384/512 and anything unknown.
        _ => return Err(AuthError::DisallowedAlgorithm),
    })
}

/// Claims that are only peeked at, never trusted: see [`peek`].
#[derive(Debug, Default, Deserialize)]
pub struct PeekedClaims {
    /// The token's unverified `iss`.
    #[serde(default)]
    pub iss: Option<String>,
    /// The token's unverified `exp`.
    #[serde(default)]
    pub exp: Option<u64>,
}

/// Reads `iss` and `exp` WITHOUT verifying anything, with the same size
/// limits. Only for choosing which verifier runs and for bounding how long a
/// remote answer is cached; never for deciding who the caller is.
pub fn peek(token: &str) -> Result<PeekedClaims, AuthError> {
    let parts = split(token)?;
    let payload = decode_part(parts.payload)?;
    serde_json::from_slice(&payload).map_err(json_error)
}

/// Syntax errors mean the part is not JSON at all; data errors mean it is
/// JSON of the wrong shape (wrong types, duplicate members).
fn json_error(error: serde_json::Error) -> AuthError {
    match error.classify() {
        serde_json::error::Category::Data => AuthError::InvalidClaims,
        _ => AuthError::Malformed,
    }
}

/// The whole check, returning the identity and the token's `exp`.
pub fn verify_token(
    config: &VerifierConfig,
    keys: &KeySet,
    token: &str,
) -> Result<Verified, AuthError> {
    let parts = split(token)?;

    let header = decode_part(parts.header)?;
    let header: JoseHeader<'_> =
        serde_json::from_slice(&header).map_err(|_| AuthError::Malformed)?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed);
    }
    let alg = algorithm(&header.alg)?;
    let key = keys
        .find(header.kid.as_deref(), alg)
        .ok_or(AuthError::UnknownKey)?;
    if !key.algorithms.contains(&alg) {
        return Err(AuthError::DisallowedAlgorithm);
    }

    // The signature covers the exact bytes `header.payload` as received.
    let signed_len = parts.header.len() + 1 + parts.payload.len();
    let message = &token.as_bytes()[..signed_len];
    match jsonwebtoken::crypto::verify(parts.signature, message, &key.key, alg) {
        Ok(true) => {}
        Ok(false) => return Err(AuthError::BadSignature),
        Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => return Err(AuthError::Malformed),
        Err(_) => return Err(AuthError::BadSignature),
    }

    // Only now, with the signature good, are the claims read.
    let payload = decode_part(parts.payload)?;
    let claims: RawClaims<'_> = serde_json::from_slice(&payload).map_err(json_error)?;
    let mut verified = check_claims(config, claims, unix_now())?;
    verified.key = Some(KeyBinding {
        fingerprint: key.fingerprint,
        source: None,
    });
    Ok(verified)
}

fn check_claims(
    config: &VerifierConfig,
    claims: RawClaims<'_>,
    now: u64,
) -> Result<Verified, AuthError> {
    let leeway = config.leeway.as_secs();

    let iss = claims.iss.ok_or(AuthError::MissingClaim("iss"))?;
    if iss != config.issuer {
        return Err(AuthError::UnknownIssuer);
    }

    let exp = claims.exp.ok_or(AuthError::MissingClaim("exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid);
    }
    let iat = claims.iat.ok_or(AuthError::MissingClaim("iat"))?;
    if iat > now.saturating_add(leeway) {
        return Err(AuthError::IssuedInFuture);
    }
    if exp <= iat {
        return Err(AuthError::InvalidClaims);
    }
    if let Some(max) = config.max_lifetime
        && exp - iat > max.as_secs()
    {
        return Err(AuthError::LifetimeTooLong);
    }

    if claims.aud.is_empty() {
        if !config.allow_missing_audience {
            return Err(AuthError::MissingAudience);
        }
    } else {
        let ours = |a: &String| config.audiences.iter().any(|ours| ours == a);
        let matches = match &claims.aud {
            Audience::None => false,
            Audience::One(a) => ours(a),
            Audience::Many(list) => list.iter().any(ours),
        };
        if !matches {
            return Err(AuthError::WrongAudience);
        }
    }

    let sub = claims.sub.ok_or(AuthError::MissingClaim("sub"))?;
    let k8s = claims
        .kubernetes
        .ok_or(AuthError::MissingClaim("kubernetes.io"))?;
    if !is_name(&k8s.namespace) || !is_name(&k8s.serviceaccount.name) {
        return Err(AuthError::InvalidClaims);
    }
    // `sub` must be exactly `system:serviceaccount:NS:NAME`; compared in
    // place (neither name can hold a `:`, see `is_name`).
    let sub_matches = sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.strip_prefix(&*k8s.namespace))
        .and_then(|rest| rest.strip_prefix(':'))
        .is_some_and(|name| name == k8s.serviceaccount.name);
    if !sub_matches {
        return Err(AuthError::SubjectMismatch);
    }
    let non_empty = |s: Cow<'_, str>| (!s.is_empty()).then(|| s.into_owned());
    Ok(Verified {
        identity: WorkloadIdentity {
            issuer: iss.into_owned(),
            namespace: k8s.namespace.into_owned(),
            service_account: k8s.serviceaccount.name.into_owned(),
            service_account_uid: non_empty(k8s.serviceaccount.uid),
            pod_name: k8s.pod.as_ref().map(|p| p.name.clone().into_owned()),
            pod_uid: k8s.pod.and_then(|p| non_empty(p.uid)),
        },
        expires_at: exp,
        key: None,
        token_exp: Some(exp),
    })
}

/// A Kubernetes object name as a namespace or service account can have:
/// non-empty, at most 253 bytes, lowercase alphanumerics, `-` and `.`. This
/// keeps `:` out, so `system:serviceaccount:NS:NAME` is unambiguous.
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://issuer.test";

    fn claims(now: u64) -> RawClaims<'static> {
        RawClaims {
            iss: Some(ISS.into()),
            sub: Some("system:serviceaccount:shop:web".into()),
            aud: Audience::Many(vec!["other".into(), "coffer".into()]),
            exp: Some(now + 600),
            nbf: Some(now),
            iat: Some(now),
            kubernetes: Some(RawKubernetes {
                namespace: "shop".into(),
                serviceaccount: RawRef {
                    name: "web".into(),
                    uid: "u-1".into(),
                },
                pod: Some(RawRef {
                    name: "web-0".into(),
                    uid: "p-1".into(),
                }),
                _node: None,
                _secret: None,
                _warnafter: None,
            }),
        }
    }

    fn check(
        f: impl FnOnce(&mut RawClaims<'static>, &mut VerifierConfig),
    ) -> Result<Verified, AuthError> {
        let now = 1_000_000;
        let mut c = claims(now);
        let mut config = VerifierConfig::new(ISS, "coffer");
        f(&mut c, &mut config);
        check_claims(&config, c, now)
    }

    #[test]
    fn good_claims_give_the_whole_identity() {
        let v = check(|_, _| {}).unwrap();
        assert_eq!(v.expires_at, 1_000_600);
        assert_eq!(v.identity.service_account_uid.as_deref(), Some("u-1"));
        assert_eq!(v.identity.pod_name.as_deref(), Some("web-0"));
        assert_eq!(v.identity.pod_uid.as_deref(), Some("p-1"));
    }

    #[test]
    fn each_claim_failure_has_its_own_reason() {
        use AuthError::*;
        type Mutation = Box<dyn FnOnce(&mut RawClaims<'static>, &mut VerifierConfig)>;
        let cases: Vec<(AuthError, Mutation)> = vec![
            (
                UnknownIssuer,
                Box::new(|c, _| c.iss = Some("https://evil".into())),
            ),
            (MissingClaim("iss"), Box::new(|c, _| c.iss = None)),
            (MissingClaim("exp"), Box::new(|c, _| c.exp = None)),
            (
                Expired,
                Box::new(|c, _| {
                    c.iat = Some(1_000_000 - 600);
                    c.exp = Some(1_000_000 - 30);
                }),
            ),
            (NotYetValid, Box::new(|c, _| c.nbf = Some(1_000_031))),
            (MissingClaim("iat"), Box::new(|c, _| c.iat = None)),
            (IssuedInFuture, Box::new(|c, _| c.iat = Some(1_000_031))),
            (
                LifetimeTooLong,
                Box::new(|_, cfg| cfg.max_lifetime = Some(Duration::from_secs(599))),
            ),
            (MissingAudience, Box::new(|c, _| c.aud = Audience::None)),
            (
                MissingAudience,
                Box::new(|c, _| c.aud = Audience::Many(vec![])),
            ),
            (
                WrongAudience,
                Box::new(|c, _| c.aud = Audience::One("vault".into())),
            ),
            (MissingClaim("sub"), Box::new(|c, _| c.sub = None)),
            (
                MissingClaim("kubernetes.io"),
                Box::new(|c, _| c.kubernetes = None),
            ),
            (
                SubjectMismatch,
                Box::new(|c, _| c.sub = Some("system:serviceaccount:ops:web".into())),
            ),
            (
                InvalidClaims,
                Box::new(|c, _| {
                    if let Some(k) = c.kubernetes.as_mut() {
                        k.namespace = "shop:web".into();
                    }
                }),
            ),
            (InvalidClaims, Box::new(|c, _| c.exp = c.iat)),
        ];
        for (want, mutate) in cases {
            assert_eq!(check(mutate).map(|_| ()), Err(want.clone()), "{want:?}");
        }
    }

    #[test]
    fn audience_reads_every_shape_the_untagged_form_read() {
        let aud = |json: &str| serde_json::from_str::<Audience>(json);
        assert_eq!(aud("null").unwrap(), Audience::None);
        assert_eq!(aud(r#""coffer""#).unwrap(), Audience::One("coffer".into()));
        assert_eq!(
            aud(r#"["a","b\u0063"]"#).unwrap(),
            Audience::Many(vec!["a".into(), "bc".into()])
        );
        assert_eq!(aud("[]").unwrap(), Audience::Many(vec![]));
        // Anything else is claims of the wrong shape, not a parse failure.
        for bad in ["1", "{}", r#"["a",1]"#, "true"] {
            let error = aud(bad).unwrap_err();
            assert_eq!(json_error(error), AuthError::InvalidClaims, "{bad}");
        }
    }

    #[test]
    fn escaped_claims_are_read_like_plain_ones() {
        // Borrowed fields fall back to owned text when the JSON escapes.
        let json = br#"{"iss":"https:\/\/issuer.test","sub":"system:serviceaccount:shop:w\u0065b",
            "aud":"coffer","exp":1000600,"iat":1000000,
            "kubernetes.io":{"namespace":"shop","serviceaccount":{"name":"web","uid":""}}}"#;
        let claims: RawClaims<'_> = serde_json::from_slice(json).unwrap();
        let config = VerifierConfig::new(ISS, "coffer");
        let verified = check_claims(&config, claims, 1_000_000).unwrap();
        assert_eq!(verified.identity.issuer, ISS);
        assert_eq!(verified.identity.service_account, "web");
        assert_eq!(verified.identity.service_account_uid, None);
    }

    #[test]
    fn kubernetes_claims_keep_their_shape_checks() {
        let claims = |k8s: &str| {
            format!(
                r#"{{"iss":"{ISS}","sub":"system:serviceaccount:shop:web","aud":"coffer",
                "exp":1000600,"iat":1000000,"kubernetes.io":{k8s}}}"#
            )
        };
        let read = |json: &str| serde_json::from_str::<RawClaims<'_>>(json).map(|_| ());
        let good = r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},
            "node":{"name":"n","uid":"x"},"warnafter":5,"credential-id":"ignored"}"#;
        assert!(read(&claims(good)).is_ok());
        for bad in [
            r#"{"namespace":"shop","serviceaccount":{"name":"web"}}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"node":"n"}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"secret":{"name":"s"}}"#,
            r#"{"namespace":"shop","serviceaccount":{"name":"web","uid":"u"},"warnafter":"soon"}"#,
            r#"{"namespace":7,"serviceaccount":{"name":"web","uid":"u"}}"#,
        ] {
            let error = read(&claims(bad)).unwrap_err();
            assert_eq!(json_error(error), AuthError::InvalidClaims, "{bad}");
        }
    }

    #[test]
    fn subject_must_match_exactly() {
        for sub in [
            "system:serviceaccount:shop:we",
            "system:serviceaccount:shop:web:",
            "system:serviceaccount:shopweb",
            "system:serviceaccount:sho:pweb",
            "system:serviceaccount::shop:web",
            "serviceaccount:shop:web",
        ] {
            assert_eq!(
                check(|c, _| c.sub = Some(sub.into())).map(|_| ()),
                Err(AuthError::SubjectMismatch),
                "{sub}"
            );
        }
    }

    #[test]
    fn leeway_applies_at_the_edges() {
        assert!(
            check(|c, _| {
                c.iat = Some(1_000_000 - 600);
                c.exp = Some(1_000_000 - 29);
            })
            .is_ok()
        );
        assert!(check(|c, _| c.nbf = Some(1_000_030)).is_ok());
        assert!(check(|c, _| c.iat = Some(1_000_030)).is_ok());
        assert!(check(|_, cfg| cfg.max_lifetime = Some(Duration::from_secs(600))).is_ok());
    }

    #[test]
    fn missing_audience_only_when_explicitly_allowed() {
        assert!(
            check(|c, cfg| {
                c.aud = Audience::None;
                cfg.allow_missing_audience = true;
            })
            .is_ok()
        );
        // Allowing a missing audience does not allow a wrong one.
        assert_eq!(
            check(|c, cfg| {
                c.aud = Audience::One("vault".into());
                cfg.allow_missing_audience = true;
            })
            .map(|_| ()),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn size_limits_come_before_decoding() {
        let keys = KeySet::default();
        let config = VerifierConfig::new(ISS, "coffer");
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify_token(&config, &keys, &huge).map(|_| ()),
            Err(AuthError::TooLarge)
        );
        let big_header = format!("{}.e30.c2ln", "a".repeat(encoded_len(MAX_HEADER_BYTES) + 1));
        assert_eq!(
            verify_token(&config, &keys, &big_header).map(|_| ()),
            Err(AuthError::TooLarge)
        );
        assert_eq!(
            verify_token(&config, &keys, "a.b").map(|_| ()),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn header_algorithms_outside_the_list_are_refused() {
        for alg in ["none", "HS256", "EdDSA", "PS512", "rs256"] {
            assert_eq!(algorithm(alg), Err(AuthError::DisallowedAlgorithm), "{alg}");
        }
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_and_the_rest_kept() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
        let mut jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{dir}jwks-a.json")).unwrap()).unwrap();
        let good = jwks["keys"].as_array().unwrap().len();
        let keys = jwks["keys"].as_array_mut().unwrap();
        keys.push(serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}));
        keys.push(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "AA"}));
        keys.push(
            serde_json::json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"}),
        );
        keys.push(
            serde_json::json!({"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"}),
        );
        keys.push(serde_json::json!({"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"}));
        keys.push(serde_json::json!({"kty": "unheard-of", "kid": "new"}));
        let set = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), good);
        assert!(set.contains_kid("rsa-a") && set.contains_kid("ec-a"));
        for skipped in ["h", "ed", "p521", "enc", "hs", "new"] {
            assert!(!set.contains_kid(skipped), "{skipped}");
        }
        // A set with nothing usable is still refused.
        let only_oct = r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#;
        assert!(matches!(
            KeySet::from_jwks_json(only_oct.as_bytes()),
            Err(KeySetError::Empty)
        ));
    }

    #[test]
    fn a_verification_is_bound_to_its_key_material() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
        let jwks = std::fs::read(format!("{dir}jwks-a.json")).unwrap();
        let pem = std::fs::read(format!("{dir}rsa-a.pub.pem")).unwrap();
        let from_jwks = KeySet::from_jwks_json(&jwks).unwrap();
        let from_pem = KeySet::from_pem(&pem).unwrap();
        let fingerprints = |set: &KeySet| -> Vec<KeyFingerprint> {
            set.by_kid.values().map(|k| k.fingerprint).collect()
        };
        // Distinct keys, distinct fingerprints; re-parsing gives the same ones.
        let a = fingerprints(&from_jwks);
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], a[1]);
        let again = KeySet::from_jwks_json(&jwks).unwrap();
        assert!(a.iter().all(|f| again.contains_fingerprint(f)));
        assert_eq!(fingerprints(&from_pem).len(), 1);
    }

    #[test]
    fn pem_keys_get_the_kubernetes_kid() {
        use rustls_pki_types::{SubjectPublicKeyInfoDer, pem::PemObject};
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
        let mut both = std::fs::read(format!("{dir}rsa-a.pub.pem")).unwrap();
        both.extend(std::fs::read(format!("{dir}ec-a.pub.pem")).unwrap());
        let keys = KeySet::from_pem(&both).unwrap();
        assert_eq!(keys.len(), 2);
        for der in SubjectPublicKeyInfoDer::pem_slice_iter(&both) {
            let der = der.unwrap();
            let kid =
                URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()));
            assert!(keys.contains_kid(&kid), "{kid}");
        }
        // The EC key verifies ES256 only, the RSA key the RSA family only.
        let ec = keys
            .by_kid
            .values()
            .find(|k| k.algorithms == [Algorithm::ES256]);
        assert!(ec.is_some());
        // A JWKS is not PEM.
        let jwks = std::fs::read(format!("{dir}jwks-a.json")).unwrap();
        assert!(KeySet::from_pem(&jwks).is_err());
    }
}
