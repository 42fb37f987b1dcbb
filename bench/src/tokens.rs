//! Tokens of real size and shape for the shipped broker: what the API
//! server projects into a pod, about 1 KiB signed with RS256 (its default
//! key) or ES256, with the `kubernetes.io` claims (pod, service account,
//! node, `warnafter`), a `jti`, and an issuer and `kid` as long as a
//! managed cluster's.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::fixture::{AUDIENCE, EC_PEM, RSA_PEM};

/// A managed cluster's issuer (an EKS one has this length).
pub(crate) const SHIPPED_ISSUER: &str =
    "https://oidc.eks.eu-west-1.amazonaws.com/id/5C2B8F0E1D3A4B6C7D8E9F0A1B2C3D4E";
/// The API server's `kid`s are a key's SHA-256, base64url: 43 characters.
pub(crate) const RS_KID: &str = "Xk3vQ1pZ8mW2rN7tY5uB0cH4jL6eD9gF1aS3dK8oP2q";
pub(crate) const ES_KID: &str = "Qa7wE2rT9yU4iO1pA6sD3fG8hJ5kL0zX2cV7bN4mM1n";

/// Which signature the token carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

/// Signs projected-token claims as the API server would: the bench
/// workload `bench/app` in pod `pod`.
pub(crate) struct Minter {
    rsa: EncodingKey,
    ec: EncodingKey,
}

impl Minter {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            rsa: EncodingKey::from_rsa_pem(RSA_PEM)?,
            ec: EncodingKey::from_ec_pem(EC_PEM)?,
        })
    }

    /// `n` tokens of service account `app`, each for its own pod
    /// (`{prefix}-{i}`), minted on two threads (RSA signing is slow).
    pub(crate) fn mint_many(
        &self,
        alg: Alg,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let per = n.div_ceil(2).max(1);
        let parts: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    scope.spawn(move || {
                        (t * per..((t + 1) * per).min(n))
                            .map(|i| self.mint(alg, "app", &format!("{prefix}-{i}")))
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("minting panicked")))
                })
                .collect()
        });
        let mut tokens = Vec::with_capacity(n);
        for part in parts {
            tokens.extend(part?);
        }
        Ok(tokens)
    }

    /// A token for `namespace/service_account` in pod `pod`, valid an hour.
    pub(crate) fn mint(
        &self,
        alg: Alg,
        service_account: &str,
        pod: &str,
    ) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let uid = |what: &str| {
            let d = ring::digest::digest(&ring::digest::SHA256, what.as_bytes());
            let h: String = d.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        };
        let claims = serde_json::json!({
            "aud": [AUDIENCE],
            "exp": now + 3600,
            "iat": now,
            "iss": SHIPPED_ISSUER,
            "jti": uid(&format!("jti/{pod}")),
            "kubernetes.io": {
                "namespace": "bench",
                "node": {
                    "name": "ip-10-0-112-34.eu-west-1.compute.internal",
                    "uid": uid("node"),
                },
                "pod": {"name": pod, "uid": uid(&format!("pod/{pod}"))},
                "serviceaccount": {"name": service_account, "uid": uid(service_account)},
                "warnafter": now + 3000,
            },
            "nbf": now,
            "sub": format!("system:serviceaccount:bench:{service_account}"),
        });
        let (algorithm, kid, key) = match alg {
            Alg::Rs256 => (Algorithm::RS256, RS_KID, &self.rsa),
            Alg::Es256 => (Algorithm::ES256, ES_KID, &self.ec),
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, key).context("signing a bench token")
    }
}

/// The fixture key set (`rsa-a`, `ec-a`) under the shipped tokens' `kid`s.
pub(crate) fn shipped_jwks() -> anyhow::Result<String> {
    let mut jwks: serde_json::Value = serde_json::from_slice(crate::fixture::RSA_JWKS)?;
    let keys = jwks["keys"]
        .as_array_mut()
        .context("the fixture JWKS has no keys")?;
    for key in keys.iter_mut() {
        match key["kid"].as_str() {
            Some("rsa-a") => key["kid"] = RS_KID.into(),
            Some("ec-a") => key["kid"] = ES_KID.into(),
            _ => {}
        }
    }
    keys.retain(|k| k["kid"] == RS_KID || k["kid"] == ES_KID);
    Ok(serde_json::to_string(&jwks)?)
}
