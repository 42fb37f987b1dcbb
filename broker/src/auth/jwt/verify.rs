//! The one verification of a token: [`JwtVerifier::verify`].
//!
//! The order is fixed and every step fails with one precise [`AuthError`]:
//! the size of the token and of each part (before any decoding), the header
//! (algorithm and `kid` only), the signature, and only then the claims. Only
//! asymmetric algorithms are accepted, so a public key can never double as an
//! HMAC secret, and keys named inside a token (`jku`, `jwk`, `x5u`) are never
//! used: keys come only from the configured [`KeySource`].
//!
//! One entry, so that every caller (the server, `cofferctl token verify`,
//! the fuzzer, the benches) runs the same check: a [`JwtVerifier`] is built
//! from a fixed [`KeySet`] or a [`KeySource`], and [`JwtVerifier::verify`]
//! checks with the keys at hand and answers the whole [`Verified`]. The
//! [`Authenticator`] impl adds only what a server needs on top: fetching
//! the keys again, once, when a token names a key the set does not hold.

use std::{borrow::Cow, sync::Arc};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, errors::ErrorKind};
use serde::Deserialize;

use super::{
    claims::{RawClaims, VerifierConfig, check_claims, json_error, unix_now},
    compact::{decode_part, split},
    keys::{FixedKeys, KeyBinding, KeySet, KeySource},
};
use crate::auth::{AuthError, Authenticator, BearerToken, Verified};

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

    /// The whole check with the keys at hand (nothing is fetched): sizes,
    /// header, signature, then claims. The answer holds the caller's
    /// identity, the token's `exp`, and the key that verified it (see
    /// [`KeyBinding`]).
    pub fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let keys = self.keys.current().ok_or(AuthError::KeysUnavailable)?;
        check_token(&self.config, &keys, &self.keys, token)
    }
}

#[async_trait]
impl Authenticator for JwtVerifier {
    /// [`JwtVerifier::verify`], fetching keys again once if the token names
    /// an unknown `kid` (or none are loaded yet) and the source allows it.
    async fn authenticate(&self, token: &BearerToken) -> Result<Verified, AuthError> {
        let token = token.expose();
        match self.verify(token) {
            Err(first @ (AuthError::UnknownKey | AuthError::KeysUnavailable)) => {
                match self.keys.refresh_for_unknown_kid().await {
                    Some(keys) => check_token(&self.config, &keys, &self.keys, token),
                    None => Err(first),
                }
            }
            other => other,
        }
    }

    fn issuers(&self) -> Vec<String> {
        vec![self.config.issuer.clone()]
    }

    fn checks_issuer(&self) -> bool {
        true
    }
}

/// The algorithms a Kubernetes issuer may use. No `none`, no HMAC.
pub const ALLOWED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The header's `alg`, if it is one of [`ALLOWED_ALGORITHMS`].
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

/// The whole check of `token` against `keys`, which came from `source`.
fn check_token(
    config: &VerifierConfig,
    keys: &KeySet,
    source: &Arc<dyn KeySource>,
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
    verified.key = Some(KeyBinding::new(key.fingerprint, Arc::clone(source)));
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{
        MAX_TOKEN_BYTES,
        jwt::{MAX_HEADER_BYTES, compact::encoded_len},
    };

    const ISS: &str = "https://issuer.test";

    #[test]
    fn size_limits_come_before_decoding() {
        let verifier = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), KeySet::default());
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verifier.verify(&huge).map(|_| ()), Err(AuthError::TooLarge));
        let big_header = format!("{}.e30.c2ln", "a".repeat(encoded_len(MAX_HEADER_BYTES) + 1));
        assert_eq!(
            verifier.verify(&big_header).map(|_| ()),
            Err(AuthError::TooLarge)
        );
        assert_eq!(
            verifier.verify("a.b").map(|_| ()),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn header_algorithms_outside_the_list_are_refused() {
        for alg in ["none", "HS256", "EdDSA", "PS512", "rs256"] {
            assert_eq!(algorithm(alg), Err(AuthError::DisallowedAlgorithm), "{alg}");
        }
    }
}
