//! Fuzzes the token path: arbitrary bytes go through the same entry points a
//! request's bearer token does (the unverified issuer peek used for routing,
//! then the full verification) against a real key set. Must never panic;
//! must never accept (nothing here holds the signing keys, so any `Ok` is a
//! forgery and a bug).
#![no_main]

use std::sync::LazyLock;

use coffer_broker::auth::jwt::{JwtVerifier, KeySet, VerifierConfig, peek};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::new(
        VerifierConfig::new("https://kubernetes.default.svc.cluster.local", "coffer"),
        KeySet::from_jwks_json(include_bytes!("../../tests/fixtures/jwks-a.json"))
            .unwrap_or_default(),
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = peek(token);
    assert!(
        VERIFIER.verify(token).is_err(),
        "a token verified without the signing key"
    );
});
