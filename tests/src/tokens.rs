//! Tokens shaped like the kubelet's projected service-account tokens,
//! signed with the test issuer's real RSA and EC keys (or foreign ones the
//! broker must refuse).

use std::{path::PathBuf, time::Duration};

use coffer_broker::auth::{jwt::ProjectedClaims, signer::DevSigner};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::process::fixture;

/// The issuer every test token names.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The broker's audience.
pub const AUDIENCE: &str = "coffer";

/// A signing key of the test issuer, or a foreign one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// RS256 with the issuer's RSA key (kid `rsa-a`).
    Rsa,
    /// ES256 with the issuer's EC key (kid `ec-a`).
    Ec,
    /// RS256 with a key the broker does not trust, claiming kid `rsa-a`.
    ForeignRsa,
    /// ES256 with a key the broker does not trust, claiming kid `ec-a`.
    ForeignEc,
}

/// Mints a projected-shape token for `namespace/service_account`.
pub fn mint(key: Key, namespace: &str, service_account: &str) -> String {
    let pod = format!("{service_account}-0");
    mint_claims(
        key,
        &claims(
            namespace,
            service_account,
            Some(&pod),
            Duration::from_secs(3600),
        ),
    )
}

/// Signs arbitrary claims with `key`.
pub fn mint_claims(key: Key, claims: &ProjectedClaims) -> String {
    let (file, kid, alg) = match key {
        Key::Rsa => ("rsa-a.pem", "rsa-a", Algorithm::RS256),
        Key::Ec => ("ec-a.pem", "ec-a", Algorithm::ES256),
        Key::ForeignRsa => ("rsa-b.pem", "rsa-a", Algorithm::RS256),
        Key::ForeignEc => ("ec-b.pem", "ec-a", Algorithm::ES256),
    };
    let pem = std::fs::read(fixture(file)).unwrap();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    claims.sign(alg, kid, &encoding).unwrap()
}

/// The claims of a test token for `namespace/service_account`, bound to
/// `pod` (name and uid) when given, valid for `ttl`.
pub fn claims(
    namespace: &str,
    service_account: &str,
    pod: Option<&str>,
    ttl: Duration,
) -> ProjectedClaims {
    ProjectedClaims::projected(ISSUER, AUDIENCE, namespace, service_account, pod, ttl)
}

/// A token of `shop/web` signed with `key`, bound to `pod` when given,
/// valid for `ttl`.
pub fn web_token(key: Key, pod: Option<&str>, ttl: Duration) -> String {
    mint_claims(key, &claims("shop", "web", pod, ttl))
}

/// A token of pod `pod` of `shop/web`, bound to the pod (name and uid).
pub fn pod_token(pod: &str) -> String {
    web_token(Key::Rsa, Some(pod), Duration::from_secs(3600))
}

/// Issuers of the test's own, each with a fresh key, trusted together
/// through one `--auth-config` file (see [`Issuers::config`]).
pub struct Issuers {
    signers: Vec<DevSigner>,
    /// The `--auth-config` file trusting every issuer.
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Issuers {
    /// One issuer per `(issuer URL, trust domain)`, the domain written as
    /// `trustDomain` when given.
    pub fn generate(issuers: &[(&str, Option<&str>)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = String::from("authenticators:\n");
        let mut signers = Vec::new();
        for (i, (issuer, domain)) in issuers.iter().enumerate() {
            let signer = DevSigner::generate(*issuer).unwrap();
            let jwks = dir.path().join(format!("issuer-{i}.json"));
            std::fs::write(&jwks, signer.jwks_json()).unwrap();
            yaml.push_str(&format!(
                "  - issuer: {}\n    audiences: [{AUDIENCE}]\n    jwksFile: {{path: {}}}\n",
                signer.issuer(),
                jwks.display()
            ));
            if let Some(domain) = domain {
                yaml.push_str(&format!("    trustDomain: {domain}\n"));
            }
            signers.push(signer);
        }
        let config = dir.path().join("auth.yaml");
        std::fs::write(&config, yaml).unwrap();
        Self {
            signers,
            config,
            _dir: dir,
        }
    }

    /// The signer of `issuer`.
    pub fn signer(&self, issuer: &str) -> &DevSigner {
        self.signers
            .iter()
            .find(|s| s.issuer() == issuer)
            .unwrap_or_else(|| panic!("no issuer {issuer}"))
    }
}
