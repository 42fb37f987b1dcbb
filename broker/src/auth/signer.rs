//! A token issuer for the dev command and for tests: a fresh P-256 key made
//! with `ring`, its JWKS, and tokens shaped like the kubelet's.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
};

use super::jwt::ProjectedClaims;

/// Why a signer could not be made or could not sign.
#[derive(Debug, thiserror::Error)]
#[error("token signer: {0}")]
pub struct SignerError(String);

/// An ES256 issuer whose private key lives only in this process.
pub struct DevSigner {
    kid: String,
    issuer: String,
    encoding: EncodingKey,
    public_point: Vec<u8>,
}

impl DevSigner {
    /// Generates a new key for `issuer`.
    pub fn generate(issuer: impl Into<String>) -> Result<Self, SignerError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| SignerError("cannot generate a P-256 key".into()))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| SignerError("generated key does not parse".into()))?;
        let public_point = pair.public_key().as_ref().to_vec();
        let kid = URL_SAFE_NO_PAD
            .encode(&ring::digest::digest(&ring::digest::SHA256, &public_point).as_ref()[..12]);
        Ok(Self {
            kid,
            issuer: issuer.into(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public_point,
        })
    }

    /// The issuer these tokens name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS that verifies this signer's tokens.
    pub fn jwks_json(&self) -> String {
        // An uncompressed P-256 point is 0x04 || X (32 bytes) || Y (32 bytes).
        let (x, y) = self.public_point[1..].split_at(32);
        serde_json::json!({
            "keys": [{
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                "kid": self.kid,
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }]
        })
        .to_string()
    }

    /// A projected-shape token for `namespace/service_account`.
    pub fn mint(
        &self,
        audience: &str,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        ttl: Duration,
    ) -> Result<String, SignerError> {
        ProjectedClaims::projected(&self.issuer, audience, namespace, service_account, pod, ttl)
            .sign(Algorithm::ES256, &self.kid, &self.encoding)
            .map_err(|e| SignerError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{
        AuthError,
        jwt::{JwtVerifier, KeySet, VerifierConfig},
    };

    const ISS: &str = "https://issuer.test";

    fn verifier(signer: &DevSigner) -> JwtVerifier {
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys)
    }

    #[test]
    fn minted_tokens_verify_into_the_identity() {
        let signer = DevSigner::generate(ISS).unwrap();
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-1"),
                Duration::from_secs(600),
            )
            .unwrap();
        let id = verifier(&signer).verify(&token).unwrap().identity;
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("shop", "web")
        );
        assert_eq!(id.pod_name.as_deref(), Some("web-1"));
        assert_eq!(id.subject(), "system:serviceaccount:shop:web");
    }

    #[test]
    fn another_audience_is_refused() {
        let signer = DevSigner::generate(ISS).unwrap();
        let token = signer
            .mint("vault", "shop", "web", None, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            verifier(&signer).verify(&token).map(|v| v.identity),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn another_key_is_refused() {
        let signer = DevSigner::generate(ISS).unwrap();
        let other = DevSigner::generate(ISS).unwrap();
        let token = other
            .mint("coffer", "shop", "web", None, Duration::from_secs(600))
            .unwrap();
        assert_eq!(
            verifier(&signer).verify(&token).map(|v| v.identity),
            Err(AuthError::UnknownKey)
        );
    }
}
