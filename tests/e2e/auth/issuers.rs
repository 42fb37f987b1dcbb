//! Identities of different issuers never collide: whoever controls one
//! trusted issuer (a dev cluster) can mint `shop/web`, but a rule naming the
//! production issuer's `shop/web` does not match it. With several issuers
//! configured, a policy whose subjects do not name an issuer is refused, at
//! start and at reload.

use std::{process::Command, time::Duration};

use coffer::Code;
use coffer_broker::auth::signer::DevSigner;
use coffer_tests::{AUDIENCE, BrokerProcess, Issuers, binary};

const DEV: &str = "https://dev.example";
const PROD: &str = "https://prod.example";

const POLICY: &str = r#"
rules:
  - name: prod-web-reads-prod
    subjects: [{issuer: "https://prod.example", namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: prod-admin-writes
    subjects: [{issuer: "https://prod.example", namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [write]
"#;

/// Two issuers, each with its own key, in one auth config.
fn issuers() -> Issuers {
    Issuers::generate(&[(DEV, None), (PROD, None)])
}

fn token(signer: &DevSigner, namespace: &str, service_account: &str) -> String {
    signer
        .mint(
            AUDIENCE,
            namespace,
            service_account,
            None,
            Duration::from_secs(600),
        )
        .unwrap()
}

#[tokio::test]
async fn a_dev_issuer_token_cannot_read_what_prod_shop_web_may() {
    let issuers = issuers();
    let broker = BrokerProcess::builder()
        .policy(POLICY)
        .auth_args(["--auth-config".as_ref(), issuers.config.as_os_str()])
        .start();
    let admin = broker
        .client(token(issuers.signer(PROD), "ops", "admin"))
        .await;
    admin
        .put(
            coffer::operator::Put::new(
                "shop/db",
                coffer::SecretData::Bytes(b"prod-only"[..].into()),
            )
            .content_type("text/plain"),
        )
        .await
        .unwrap();
    assert_eq!(
        broker
            .read_code(token(issuers.signer(PROD), "shop", "web"), "shop/db")
            .await,
        None
    );
    // Same namespace and service account, signed by the other trusted issuer.
    assert_eq!(
        broker
            .read_code(token(issuers.signer(DEV), "shop", "web"), "shop/db")
            .await,
        Some(Code::PermissionDenied)
    );
}

#[tokio::test]
async fn a_policy_without_issuers_is_refused_when_several_are_configured() {
    let issuers = issuers();
    let unnamed = POLICY.replace("issuer: \"https://prod.example\", ", "");

    // At start: the broker exits with EX_USAGE and says why.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, &unnamed).unwrap();
    let output = Command::new(binary("coffer-broker"))
        .args(["serve", "--listen=127.0.0.1:0", "--auth-config"])
        .arg(&issuers.config)
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let text = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("must name an issuer"), "{text}");

    // At reload: refused, and the policy in force stays.
    let broker = BrokerProcess::builder()
        .policy(POLICY)
        .auth_args(["--auth-config".as_ref(), issuers.config.as_os_str()])
        .start();
    broker.write_policy(&unnamed);
    broker.wait_for_log("policy reload refused", 1);
    assert_eq!(
        broker
            .read_code(token(issuers.signer(DEV), "shop", "web"), "shop/db")
            .await,
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        broker
            .read_code(token(issuers.signer(PROD), "shop", "web"), "shop/db")
            .await,
        Some(Code::NotFound)
    );
}
