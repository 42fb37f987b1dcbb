//! Verification rates: raw `ring`, cold (full verification, no cache) and
//! cached, for RS256 and ES256, all measured in the same run.
//!
//! `cargo bench -p coffer-broker --bench auth`. Targets (printed, never
//! asserted): cold >= 0.8x raw ring, cached >= 10x cold.

use std::{
    hint::black_box,
    num::NonZeroUsize,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use coffer_broker::auth::{
    Authenticator, BearerToken,
    cache::CachingAuthenticator,
    jwt::{JwtVerifier, KeySet, ProjectedClaims, VerifierConfig},
};
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::signature::{self, UnparsedPublicKey};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const RUN_FOR: Duration = Duration::from_millis(1500);

fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
    std::fs::read(format!("{path}{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Operations per second of `f`, run for about `RUN_FOR`.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_FOR {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap_or_default()
}

fn main() {
    let jwks = fixture("jwks-a.json");
    let jwks_value: serde_json::Value = serde_json::from_slice(&jwks).unwrap_or_default();
    let config = VerifierConfig::new(ISSUER, "coffer");
    let uncached = JwtVerifier::new(
        config.clone(),
        KeySet::from_jwks_json(&jwks).unwrap_or_else(|e| panic!("{e}")),
    );
    let claims = ProjectedClaims::projected(
        ISSUER,
        "coffer",
        "shop",
        "web",
        Some("web-0"),
        Duration::from_secs(3600),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    println!(
        "{:<6} {:>14} {:>14} {:>14} {:>12} {:>14}",
        "alg", "raw ring/s", "cold/s", "cached/s", "cold/raw", "cached/cold"
    );
    for (alg, pem, kid) in [
        (Algorithm::RS256, "rsa-a.pem", "rsa-a"),
        (Algorithm::ES256, "ec-a.pem", "ec-a"),
    ] {
        let pem = fixture(pem);
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let token = claims
            .sign(alg, kid, &encoding)
            .unwrap_or_else(|e| panic!("{e}"));
        let (message, sig) = token.rsplit_once('.').unwrap_or_default();
        let sig = b64(sig);
        let jwk = jwks_value["keys"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["kid"] == kid))
            .cloned()
            .unwrap_or_default();

        // Raw ring: the signature check alone, on pre-decoded bytes.
        let raw = match alg {
            Algorithm::RS256 => {
                let n = b64(jwk["n"].as_str().unwrap_or_default());
                let e = b64(jwk["e"].as_str().unwrap_or_default());
                let key = signature::RsaPublicKeyComponents { n, e };
                rate(|| {
                    key.verify(
                        &signature::RSA_PKCS1_2048_8192_SHA256,
                        message.as_bytes(),
                        &sig,
                    )
                    .unwrap_or_else(|_| panic!("raw RSA verify"));
                })
            }
            _ => {
                let mut point = vec![4u8];
                point.extend(b64(jwk["x"].as_str().unwrap_or_default()));
                point.extend(b64(jwk["y"].as_str().unwrap_or_default()));
                let key = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point);
                rate(|| {
                    key.verify(message.as_bytes(), &sig)
                        .unwrap_or_else(|_| panic!("raw EC verify"));
                })
            }
        };

        // Cold: the broker's whole check (sizes, header, signature, claims).
        let cold = rate(|| {
            black_box(
                uncached
                    .verify(black_box(&token))
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        });

        // Cached: the authenticator the broker runs, answering from its cache.
        let verifier = JwtVerifier::new(
            config.clone(),
            KeySet::from_jwks_json(&jwks).unwrap_or_else(|e| panic!("{e}")),
        );
        let cache =
            CachingAuthenticator::new(Arc::new(verifier), NonZeroUsize::MIN.saturating_add(1023));
        let bearer = BearerToken::new(token.clone());
        let cached = runtime.block_on(async {
            let mut ops = 0u64;
            let start = Instant::now();
            while start.elapsed() < RUN_FOR {
                for _ in 0..256 {
                    black_box(
                        cache
                            .authenticate(&bearer)
                            .await
                            .unwrap_or_else(|e| panic!("{e}")),
                    );
                }
                ops += 256;
            }
            ops as f64 / start.elapsed().as_secs_f64()
        });

        println!(
            "{:<6} {:>14.0} {:>14.0} {:>14.0} {:>11.2}x {:>13.1}x",
            format!("{alg:?}"),
            raw,
            cold,
            cached,
            cold / raw,
            cached / cold
        );
    }
    println!("targets: cold >= 0.80x raw ring; cached >= 10x cold");
}
