//! `--peer-identity` names the issuer too: with two trusted issuers, only
//! the named issuer's `coffer/coffer-broker` may call `NotifyChanged` (each
//! call costs a store re-read and a cache flush). The old form without an
//! issuer is accepted only when exactly one issuer is configured; with
//! several it is refused at start (exit 64), as is an issuer not configured.

use std::{process::Command, time::Duration};

use coffer::Code;
use coffer_broker::auth::signer::DevSigner;
use coffer_tests::{AUDIENCE, BrokerProcess, Issuers, Process, binary};

const DEV: &str = "https://dev.example";
const PROD: &str = "https://prod.example";

const POLICY: &str = r#"
rules:
  - name: prod-admin-writes
    subjects: [{issuer: "https://prod.example", namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [write]
"#;

/// Two issuers, each with its own key, in one auth config.
fn issuers() -> Issuers {
    Issuers::generate(&[(DEV, None), (PROD, None)])
}

fn broker_token(signer: &DevSigner) -> String {
    signer
        .mint(
            AUDIENCE,
            "coffer",
            "coffer-broker",
            Some("coffer-0"),
            Duration::from_secs(600),
        )
        .unwrap()
}

/// Starts `coffer-broker serve` with `args` and waits (up to 20 s) for it
/// to exit: the exit code (`None`: still running) and everything it
/// printed.
fn refused_at_start(issuers: &Issuers, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut command = Command::new(binary("coffer-broker"));
    command
        .args(["serve", "--listen=127.0.0.1:0", "--auth-config"])
        .arg(&issuers.config)
        .arg("--policy")
        .arg(&policy)
        .args(args);
    let mut process = Process::spawn(command, dir.path().join("broker.log"));
    let code = process
        .wait(Duration::from_secs(20))
        .map(|status| status.code().unwrap_or(-1));
    (code, process.output())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_named_issuers_broker_may_notify_a_change() {
    let issuers = issuers();
    let broker = BrokerProcess::builder()
        .policy(POLICY)
        .auth_args([
            "--auth-config".as_ref(),
            issuers.config.as_os_str(),
            "--peer-identity".as_ref(),
            format!("{PROD}=coffer/coffer-broker").as_ref(),
        ])
        .start();
    // Same namespace and service account, signed by the other trusted issuer.
    let impostor = broker.client(broker_token(issuers.signer(DEV))).await;
    let error = coffer::replica::notify_changed(&impostor, "shop/db")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::PermissionDenied));
    let peer = broker.client(broker_token(issuers.signer(PROD))).await;
    coffer::replica::notify_changed(&peer, "shop/db")
        .await
        .unwrap();
}

#[test]
fn a_peer_identity_without_an_issuer_is_refused_when_several_are_configured() {
    let issuers = issuers();
    let (code, text) = refused_at_start(&issuers, &["--peer-identity", "coffer/coffer-broker"]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("--peer-identity"), "{text}");
    assert!(
        text.contains("ISSUER="),
        "says how to name the issuer: {text}"
    );
}

#[test]
fn a_peer_identity_naming_an_unconfigured_issuer_is_refused() {
    let issuers = issuers();
    let (code, text) = refused_at_start(
        &issuers,
        &[
            "--peer-identity",
            "https://other.example=coffer/coffer-broker",
        ],
    );
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("not configured"), "{text}");
}
