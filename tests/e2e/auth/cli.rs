//! `cofferctl token verify`: the broker's verification code, with exit codes
//! an operator can script: 0 valid, 1 rejected, 2 usage error.

use std::time::Duration;

use coffer_tests::{AUDIENCE, ISSUER, Key, cofferctl_with_input, fixture, mint, mint_claims};

/// Runs `cofferctl token verify ARGS` with `stdin`; returns (code, stdout, stderr).
fn verify(args: &[&str], stdin: &str) -> (i32, String, String) {
    cofferctl_with_input(["token", "verify"].iter().chain(args), stdin.as_bytes())
}

fn standard_args() -> Vec<String> {
    vec![
        "--jwks".into(),
        fixture("jwks-a.json").display().to_string(),
        "--issuer".into(),
        ISSUER.into(),
        "--audience".into(),
        AUDIENCE.into(),
    ]
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut all = standard_args();
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

fn run(args: &[String], stdin: &str) -> (i32, String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    verify(&refs, stdin)
}

#[test]
fn a_valid_token_prints_the_identity_and_exits_0() {
    let token = mint(Key::Rsa, "shop", "web");
    let (code, out, _) = run(&args(&[]), &format!("{token}\n"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("valid: system:serviceaccount:shop:web"),
        "{out}"
    );
    assert!(out.contains("web-0"), "pod name: {out}");
    assert!(!out.contains(&token), "the token is not echoed");
}

#[test]
fn a_rejected_token_prints_the_precise_reason_and_exits_1() {
    let mut expired = coffer_tests::claims("shop", "web", None, Duration::from_secs(60));
    expired.iat -= 7200;
    expired.nbf = Some(expired.iat);
    expired.exp -= 7200;
    let (code, out, _) = run(&args(&[]), &mint_claims(Key::Ec, &expired));
    assert_eq!((code, out.contains("(expired)")), (1, true), "{out}");

    let (code, out, _) = run(&args(&[]), &mint(Key::ForeignRsa, "shop", "web"));
    assert_eq!((code, out.contains("(bad_signature)")), (1, true), "{out}");

    let mut wrong_aud = standard_args();
    wrong_aud[5] = "vault".into();
    let (code, out, _) = run(&wrong_aud, &mint(Key::Rsa, "shop", "web"));
    assert_eq!((code, out.contains("(wrong_audience)")), (1, true), "{out}");

    let (code, out, _) = run(&args(&[]), "not-a-jwt");
    assert_eq!((code, out.contains("(malformed)")), (1, true), "{out}");
}

#[test]
fn leeway_is_honoured() {
    // Expired 100 s ago: rejected with the default 30 s, accepted with 300 s.
    let mut claims = coffer_tests::claims("shop", "web", None, Duration::from_secs(60));
    claims.iat -= 160;
    claims.nbf = Some(claims.iat);
    claims.exp -= 160;
    let token = mint_claims(Key::Rsa, &claims);
    assert_eq!(run(&args(&[]), &token).0, 1);
    assert_eq!(run(&args(&["--leeway", "300"]), &token).0, 0);
}

#[test]
fn usage_errors_exit_2() {
    let token = mint(Key::Rsa, "shop", "web");
    // Missing flag (clap).
    assert_eq!(verify(&["--jwks", "x", "--issuer", ISSUER], &token).0, 2);
    // Unreadable JWKS.
    let (code, _, err) = verify(
        &[
            "--jwks",
            "/nonexistent/jwks.json",
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
        ],
        &token,
    );
    assert_eq!(code, 2, "{err}");
    // A file that is not a JWKS.
    let not_jwks = fixture("rsa-a.pem").display().to_string();
    let (code, _, err) = verify(
        &[
            "--jwks",
            &not_jwks,
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
        ],
        &token,
    );
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("PRIVATE"), "no key material in errors: {err}");
    // No token on stdin.
    assert_eq!(run(&args(&[]), "").0, 2);
}

/// The value printed after `label:` on its own line of `out`.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    let prefix = format!("{label}:");
    out.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}

/// Whether `text` starts with an RFC 3339 UTC time to the second.
fn starts_with_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit))
}

#[test]
fn a_valid_token_prints_its_claims_times_and_key() {
    let mut claims = coffer_tests::claims("shop", "web", Some("web-0"), Duration::from_secs(3600));
    claims.aud = coffer_broker::auth::jwt::Audience::Many(vec![AUDIENCE.into(), "vault".into()]);
    claims.kubernetes.serviceaccount.uid = "sa-uid-1".into();
    claims.kubernetes.pod.as_mut().unwrap().uid = "pod-uid-1".into();
    let token = mint_claims(Key::Rsa, &claims);
    let (code, out, err) = run(&args(&[]), &token);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().next(),
        Some("valid: system:serviceaccount:shop:web")
    );
    assert_eq!(field(&out, "issuer"), ISSUER);
    assert_eq!(field(&out, "audiences"), "coffer, vault");
    assert_eq!(field(&out, "subject"), "system:serviceaccount:shop:web");
    assert_eq!(field(&out, "namespace"), "shop");
    assert_eq!(field(&out, "service account"), "web (uid sa-uid-1)");
    assert_eq!(field(&out, "pod"), "web-0 (uid pod-uid-1)");
    assert_eq!(field(&out, "key id"), "rsa-a");
    assert_eq!(field(&out, "algorithm"), "RS256");
    let expires = field(&out, "expires");
    assert!(starts_with_rfc3339(expires), "{expires}");
    assert!(
        expires.ends_with("(in 1h)") || expires.contains("(in 59m"),
        "{expires}"
    );
    for label in ["issued at", "not before"] {
        let at = field(&out, label);
        assert!(starts_with_rfc3339(at), "{label}: {at}");
        assert!(
            at.ends_with("(now)") || at.ends_with(" ago)"),
            "{label}: {at}"
        );
    }
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the token is not echoed"
    );
}

#[test]
fn a_rejected_token_prints_the_reason_and_its_unverified_claims() {
    // 2023-11-14T22:13:20Z, for an hour: long expired.
    let mut claims = coffer_tests::claims("shop", "web", Some("web-0"), Duration::from_secs(3600));
    claims.iat = 1_700_000_000;
    claims.nbf = Some(claims.iat);
    claims.exp = claims.iat + 3600;
    let token = mint_claims(Key::Ec, &claims);
    let (code, out, err) = run(&args(&[]), &token);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out.lines().next(),
        Some("rejected: token has expired (expired)")
    );
    assert!(out.contains("NOT verified"), "{out}");
    let expires = field(&out, "expires");
    assert!(
        expires.starts_with("2023-11-14T23:13:20Z (") && expires.ends_with(" ago)"),
        "{expires}"
    );
    assert!(field(&out, "issued at").starts_with("2023-11-14T22:13:20Z ("));
    assert!(field(&out, "not before").starts_with("2023-11-14T22:13:20Z ("));
    assert_eq!(field(&out, "audiences"), AUDIENCE);
    assert_eq!(field(&out, "key id"), "ec-a");
    assert_eq!(field(&out, "algorithm"), "ES256");
    assert!(
        !out.contains(&token) && !err.contains(&token),
        "the token is not echoed"
    );

    // A token that is not a JWT has nothing to show but the reason.
    let (code, out, _) = run(&args(&[]), "not-a-jwt");
    assert_eq!(
        (code, out.trim()),
        (1, "rejected: token is not a well-formed JWS (malformed)")
    );
}

#[test]
fn json_output_carries_the_claims_and_the_verdict() {
    let token = mint(Key::Rsa, "shop", "web");
    let (code, out, err) = run(&args(&["--output", "json"]), &token);
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["subject"], "system:serviceaccount:shop:web");
    let claims = &answer["token"];
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], serde_json::json!([AUDIENCE]));
    assert_eq!(claims["kid"], "rsa-a");
    assert_eq!(claims["alg"], "RS256");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    assert!(starts_with_rfc3339(claims["expiresAt"].as_str().unwrap()));
    assert!(!out.contains(&token));

    let (code, out, _) = run(
        &args(&["--output", "json"]),
        &mint(Key::ForeignRsa, "shop", "web"),
    );
    assert_eq!(code, 1);
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (answer["valid"].as_bool(), answer["reason"].as_str()),
        (Some(false), Some("bad_signature"))
    );
    assert_eq!(answer["token"]["sub"], "system:serviceaccount:shop:web");
}
