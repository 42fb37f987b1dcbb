//! A table of bad tokens: every one is refused with `Unauthenticated` by a
//! real broker, with the precise reason in the server log and the per-reason
//! metric, and none crashes the broker or shows up in its output.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use coffer::Code;
use coffer_tests::{BrokerProcess, Key, eventually, fixture, mint};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-a.pem")).unwrap()).unwrap()
}

/// Good claims for shop/web, as JSON to be bent.
fn claims() -> Value {
    serde_json::to_value(coffer_tests::claims(
        "shop",
        "web",
        Some("web-0"),
        Duration::from_secs(3600),
    ))
    .unwrap()
}

/// `header.payload.signature` from raw JSON text, signed with `key` when given.
fn raw(header: &str, payload: &str, key: Option<(&EncodingKey, Algorithm)>) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let signature = match key {
        Some((key, alg)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{message}.{signature}")
}

/// The claims bent by `f`, signed by the issuer's real RSA key.
fn signed(f: impl FnOnce(&mut Value)) -> String {
    let mut c = claims();
    f(&mut c);
    raw(
        r#"{"alg":"RS256","kid":"rsa-a"}"#,
        &c.to_string(),
        Some((&rsa(), Algorithm::RS256)),
    )
}

fn cases() -> Vec<(&'static str, String, &'static str)> {
    let t = now();
    let good = mint(Key::Rsa, "shop", "web");
    let (good_head, rest) = good.split_once('.').unwrap();
    let (good_payload, good_sig) = rest.split_once('.').unwrap();
    let other = mint(Key::Rsa, "ops", "admin");
    let other_sig = other.rsplit_once('.').unwrap().1;
    let jwks = std::fs::read(fixture("jwks-a.json")).unwrap();
    let claims_text = claims().to_string();
    vec![
        (
            "expired",
            signed(|c| {
                c["iat"] = json!(t - 7200);
                c["nbf"] = json!(t - 7200);
                c["exp"] = json!(t - 3600);
            }),
            "expired",
        ),
        (
            "not yet valid",
            signed(|c| c["nbf"] = json!(t + 3600)),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            signed(|c| {
                c["iat"] = json!(t + 3600);
                c["exp"] = json!(t + 7200);
            }),
            "issued_in_future",
        ),
        (
            "wrong issuer",
            signed(|c| c["iss"] = json!("https://evil.example")),
            "unknown_issuer",
        ),
        (
            "no issuer",
            signed(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "missing_claim",
        ),
        (
            "wrong audience",
            signed(|c| c["aud"] = json!(["vault"])),
            "wrong_audience",
        ),
        (
            "no audience",
            signed(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "missing_audience",
        ),
        (
            "alg none, no signature",
            raw(r#"{"alg":"none"}"#, &claims_text, None),
            "disallowed_algorithm",
        ),
        (
            "alg none with the real signature",
            format!(
                "{}.{good_payload}.{good_sig}",
                b64(br#"{"alg":"none","kid":"rsa-a"}"#)
            ),
            "disallowed_algorithm",
        ),
        (
            "HS256 keyed with the public JWKS",
            raw(
                r#"{"alg":"HS256","kid":"rsa-a"}"#,
                &claims_text,
                Some((&EncodingKey::from_secret(&jwks), Algorithm::HS256)),
            ),
            "disallowed_algorithm",
        ),
        (
            "PS384 is not on the list",
            raw(
                r#"{"alg":"PS384","kid":"rsa-a"}"#,
                &claims_text,
                Some((&rsa(), Algorithm::PS384)),
            ),
            "disallowed_algorithm",
        ),
        (
            "ES256 header on the RSA key",
            format!(
                "{}.{good_payload}.{good_sig}",
                b64(br#"{"alg":"ES256","kid":"rsa-a"}"#)
            ),
            "disallowed_algorithm",
        ),
        (
            "signed by another RSA key",
            mint(Key::ForeignRsa, "shop", "web"),
            "bad_signature",
        ),
        (
            "signed by another EC key",
            mint(Key::ForeignEc, "shop", "web"),
            "bad_signature",
        ),
        (
            "unknown kid",
            raw(
                r#"{"alg":"RS256","kid":"rsa-zz"}"#,
                &claims_text,
                Some((&rsa(), Algorithm::RS256)),
            ),
            "unknown_kid",
        ),
        (
            "signature of another token",
            format!("{good_head}.{good_payload}.{other_sig}"),
            "bad_signature",
        ),
        (
            "truncated signature",
            good[..good.len() - 22].to_string(),
            "bad_signature",
        ),
        (
            "truncated after the payload",
            format!("{good_head}.{good_payload}"),
            "malformed",
        ),
        ("extra segment", format!("{good}.e30"), "malformed"),
        (
            "five segments (JWE shape)",
            format!("{good_head}.a.b.c.d"),
            "malformed",
        ),
        ("not a JWT at all", "not-a-jwt".to_string(), "malformed"),
        (
            "invalid base64 header",
            format!("!!!.{good_payload}.{good_sig}"),
            "malformed",
        ),
        (
            "padded base64 header",
            format!(
                "{}=.{good_payload}.{good_sig}",
                b64(br#"{"alg":"RS256","kid":"rsa-a"}"#)
            ),
            "malformed",
        ),
        (
            "invalid base64 signature",
            format!("{good_head}.{good_payload}.{}*", &good_sig[1..]),
            "malformed",
        ),
        (
            "invalid JSON header",
            format!("{}.{good_payload}.{good_sig}", b64(b"{alg:RS256")),
            "malformed",
        ),
        (
            "critical header extension",
            raw(
                r#"{"alg":"RS256","kid":"rsa-a","crit":["exp"],"exp":1}"#,
                &claims_text,
                Some((&rsa(), Algorithm::RS256)),
            ),
            "malformed",
        ),
        (
            "invalid JSON payload, validly signed",
            raw(
                r#"{"alg":"RS256","kid":"rsa-a"}"#,
                "{\"iss\":",
                Some((&rsa(), Algorithm::RS256)),
            ),
            "malformed",
        ),
        (
            "payload is a JSON array",
            raw(
                r#"{"alg":"RS256","kid":"rsa-a"}"#,
                "[1,2]",
                Some((&rsa(), Algorithm::RS256)),
            ),
            "invalid_claims",
        ),
        (
            "huge token",
            format!("{good}{}", "A".repeat(17 * 1024)),
            "too_large",
        ),
        (
            "oversized header part",
            format!("{}.{good_payload}.{good_sig}", "A".repeat(2000)),
            "too_large",
        ),
        (
            "exp of the wrong type",
            signed(|c| c["exp"] = json!("tomorrow")),
            "invalid_claims",
        ),
        (
            "aud of the wrong type",
            signed(|c| c["aud"] = json!(42)),
            "invalid_claims",
        ),
        (
            "kubernetes.io of the wrong type",
            signed(|c| c["kubernetes.io"] = json!("shop")),
            "invalid_claims",
        ),
        (
            "duplicate exp member",
            raw(
                r#"{"alg":"RS256","kid":"rsa-a"}"#,
                &claims_text.replacen('{', &format!("{{\"exp\":{},", t + 60), 1),
                Some((&rsa(), Algorithm::RS256)),
            ),
            "invalid_claims",
        ),
        (
            "no exp",
            signed(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "missing_claim",
        ),
        (
            "no kubernetes.io claim",
            signed(|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
            "missing_claim",
        ),
        (
            "sub disagrees with the namespace claim",
            signed(|c| c["sub"] = json!("system:serviceaccount:ops:web")),
            "subject_mismatch",
        ),
        (
            "namespace smuggling a colon",
            signed(|c| {
                c["kubernetes.io"]["namespace"] = json!("shop:web");
                c["sub"] = json!("system:serviceaccount:shop:web:web");
            }),
            "invalid_claims",
        ),
    ]
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_with_its_precise_reason() {
    let broker = BrokerProcess::builder()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start();
    let cases = cases();
    assert!(cases.len() >= 25, "the issue asks for at least 25 cases");

    for (i, (name, token, reason)) in cases.iter().enumerate() {
        let client = broker.client(token.clone()).await;
        let error = client.get("shop/db").await.unwrap_err();
        assert_eq!(error.code(), Some(Code::Unauthenticated), "{name}: {error}");
        assert!(
            error.to_string().contains("authentication failed"),
            "{name}: generic message"
        );
        let logged = eventually(Duration::from_secs(10), "the failure in the log", || {
            let reasons = broker.auth_failure_reasons();
            (reasons.len() > i).then(|| reasons[i].clone())
        });
        assert_eq!(&logged, reason, "{name}");
    }

    // The broker is alive and still serves good tokens (shop/db is absent,
    // so the answer is NotFound: authenticated and authorized).
    let good = broker.client(mint(Key::Ec, "shop", "web")).await;
    assert_eq!(
        good.get("shop/db").await.unwrap_err().code(),
        Some(Code::NotFound)
    );

    // Each reason is counted, under its name only.
    let metrics = broker.metrics();
    for reason in [
        "expired",
        "disallowed_algorithm",
        "bad_signature",
        "unknown_kid",
        "malformed",
        "too_large",
        "subject_mismatch",
    ] {
        let expected = cases.iter().filter(|c| c.2 == reason).count();
        assert!(
            metrics.contains(&format!(
                "coffer_auth_failures_total{{reason=\"{reason}\"}} {expected}"
            )),
            "{reason} x{expected} in\n{metrics}"
        );
    }

    // No token, and no signature of one, appears in the broker's output.
    let output = broker.process.output();
    for (name, token, _) in &cases {
        let tail = token.rsplit('.').next().unwrap_or_default();
        assert!(!output.contains(token.as_str()), "{name} leaked");
        if tail.len() > 16 {
            assert!(!output.contains(tail), "{name} signature leaked");
        }
    }
}
