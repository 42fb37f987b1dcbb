//! Verification keys: the [`KeySet`] of one issuer (parsed from a JWKS or
//! from PEM public keys), where a verifier's keys come from ([`KeySource`]),
//! and the [`KeyBinding`] that ties a cached answer to the key that verified
//! it. Only asymmetric keys are kept, each with the algorithms it may verify:
//! a public key can never double as an HMAC secret.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use data_encoding::HEXLOWER;
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;

/// The algorithms an RSA key may verify.
const RSA_FAMILY: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
];

/// One verification key.
pub(super) struct VerifyingKey {
    pub(super) key: DecodingKey,
    /// The algorithms this key may verify.
    pub(super) algorithms: Vec<Algorithm>,
    /// SHA-256 of the public key material, to tell whether the key that
    /// verified a cached answer is still in its set.
    pub(super) fingerprint: KeyFingerprint,
}

/// SHA-256 of a public key's material (not of its `kid`).
pub type KeyFingerprint = [u8; 32];

/// The key that verified a token and the source it came from, so that a
/// cached answer can be dropped once the key leaves the source's set.
pub struct KeyBinding {
    fingerprint: KeyFingerprint,
    source: Option<Arc<dyn KeySource>>,
    /// The source's [`KeySource::generation`] at which the key was last
    /// found in its set ([`NEVER`]: not yet): while the generation stays,
    /// the set has not changed and the key is still in it.
    confirmed: AtomicU64,
}

/// No generation confirmed yet.
const NEVER: u64 = u64::MAX;

impl Clone for KeyBinding {
    fn clone(&self) -> Self {
        Self {
            fingerprint: self.fingerprint,
            source: self.source.clone(),
            confirmed: AtomicU64::new(self.confirmed.load(Ordering::Acquire)),
        }
    }
}

impl KeyBinding {
    /// `fingerprint`'s key, found in `source`'s set.
    pub(super) fn new(fingerprint: KeyFingerprint, source: Arc<dyn KeySource>) -> Self {
        Self {
            fingerprint,
            source: Some(source),
            confirmed: AtomicU64::new(NEVER),
        }
    }

    /// The verifying key's fingerprint.
    pub fn fingerprint(&self) -> &KeyFingerprint {
        &self.fingerprint
    }

    /// Whether the key is still in its source's current set. A binding
    /// without a source (a fixed key set) always is. Asked on every cache
    /// hit: when the source tells a generation and it is the one at which
    /// the key was last found, the set has not changed since and nothing
    /// more is read (no lock, no shared count touched); otherwise the set is
    /// searched.
    pub fn is_current(&self) -> bool {
        let Some(source) = &self.source else {
            return true;
        };
        // Read before the set: a change after this read bumps the
        // generation, so the next check searches again.
        let generation = source.generation();
        if generation.is_some_and(|g| g != NEVER && self.confirmed.load(Ordering::Acquire) == g) {
            return true;
        }
        let current = source
            .current()
            .is_some_and(|keys| keys.contains_fingerprint(&self.fingerprint));
        if current && let Some(g) = generation {
            self.confirmed.store(g, Ordering::Release);
        }
        current
    }
}

impl std::fmt::Debug for KeyBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A public key's digest is not secret; eight bytes identify it.
        let short = HEXLOWER.encode(&self.fingerprint[..8]);
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
                (key, RSA_FAMILY.to_vec())
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

    pub(super) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyingKey> {
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
        AlgorithmParameters::RSA(_) => RSA_FAMILY.to_vec(),
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

    /// A number that changes whenever the set [`KeySource::current`]
    /// answers changes (a source reloaded on a schedule runs its due check
    /// here too), or `None` when the source cannot tell: then every check
    /// of a cached answer's key searches the set.
    fn generation(&self) -> Option<u64> {
        None
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
