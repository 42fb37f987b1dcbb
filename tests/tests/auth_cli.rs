//! `cofferctl token verify`: the broker's verification code, with exit codes
//! an operator can script: 0 valid, 1 rejected, 2 usage error.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use coffer_broker::auth::jwt::ProjectedClaims;
use coffer_tests::{AUDIENCE, ISSUER, Key, binary, fixture, mint, mint_claims};

/// Runs `cofferctl token verify ARGS` with `stdin`; returns (code, stdout, stderr).
fn verify(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary("cofferctl"))
        .args(["token", "verify"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that exits early (usage error) may close stdin first.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let mut expired = ProjectedClaims::projected(
        ISSUER,
        AUDIENCE,
        "shop",
        "web",
        None,
        Duration::from_secs(60),
    );
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
    let mut claims = ProjectedClaims::projected(
        ISSUER,
        AUDIENCE,
        "shop",
        "web",
        None,
        Duration::from_secs(60),
    );
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
