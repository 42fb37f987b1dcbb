//! Certificates name the trust domain of the caller's issuer (issue #22):
//! two trusted clusters' `shop/web` get two SPIFFE IDs, each issuer's
//! `trustDomain` from `--auth-config`. With several issuers and an issuer
//! without a trust domain, a broker serving a `pki` mount refuses to start.

use std::{process::Command, time::Duration};

use coffer_broker::auth::signer::DevSigner;
use coffer_tests::{
    AUDIENCE, BrokerProcess, Issuers, Process, binary,
    openbao::{OpenBao, ROOT_TOKEN},
};

const EAST: &str = "https://east.example";
const WEST: &str = "https://west.example";

const POLICY: &str = r#"
rules:
  - name: east-web-certificates
    subjects: [{issuer: "https://east.example", namespace: shop, serviceAccount: web}]
    paths: ["shop/tls"]
    capabilities: [read, watch]
  - name: west-web-certificates
    subjects: [{issuer: "https://west.example", namespace: shop, serviceAccount: web}]
    paths: ["shop/tls"]
    capabilities: [read, watch]
"#;

/// Two issuers in one auth config, each with `trust_domain` when given.
fn issuers(east_domain: Option<&str>, west_domain: Option<&str>) -> Issuers {
    Issuers::generate(&[(EAST, east_domain), (WEST, west_domain)])
}

/// OpenBao's PKI engine with a role for both trust domains, and the
/// broker's Vault config serving it at `shop/tls` (no trustDomain on the
/// mount: it follows the issuer).
fn pki_vault_config(bao: &OpenBao) -> std::path::PathBuf {
    bao.enable_pki("spiffe://east.example/*,spiffe://west.example/*");
    let token = bao.file("root-token", ROOT_TOKEN);
    bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: shop/tls, mount: pki, type: pki, role: web, dnsNames: [web.shop.svc], ttl: 1h, grace: 2s}}\n",
            bao.addr,
            token.display()
        ),
    )
}

/// The URI SANs of a PEM certificate.
fn uri_sans(pem: &[u8]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.crt");
    std::fs::write(&file, pem).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split([',', '\n'])
        .map(str::trim)
        .filter_map(|s| s.strip_prefix("URI:"))
        .map(str::to_string)
        .collect()
}

async fn certificate_of(broker: &BrokerProcess, signer: &DevSigner) -> Vec<u8> {
    let token = signer
        .mint(AUDIENCE, "shop", "web", None, Duration::from_secs(600))
        .unwrap();
    let secret = broker.client(token).await.get("shop/tls").await.unwrap();
    secret.data().key("tls.crt").unwrap().expose().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clusters_shop_web_get_the_trust_domain_of_their_own_issuer() {
    let bao = OpenBao::start();
    let vault = pki_vault_config(&bao);
    let issuers = issuers(Some("east.example"), Some("west.example"));
    let broker = BrokerProcess::builder()
        .policy(POLICY)
        .auth_args([
            "--auth-config".as_ref(),
            issuers.config.as_os_str(),
            "--store=vault".as_ref(),
            "--vault-config".as_ref(),
            vault.as_os_str(),
        ])
        .start();
    let east = certificate_of(&broker, issuers.signer(EAST)).await;
    let west = certificate_of(&broker, issuers.signer(WEST)).await;
    assert_eq!(uri_sans(&east), ["spiffe://east.example/ns/shop/sa/web"]);
    assert_eq!(uri_sans(&west), ["spiffe://west.example/ns/shop/sa/web"]);
}

#[test]
fn several_issuers_and_one_without_a_trust_domain_refuse_to_start() {
    let bao = OpenBao::start();
    let vault = pki_vault_config(&bao);
    let issuers = issuers(Some("east.example"), None);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut command = Command::new(binary("coffer-broker"));
    command
        .args(["serve", "--listen=127.0.0.1:0", "--store=vault"])
        .arg("--auth-config")
        .arg(&issuers.config)
        .arg("--vault-config")
        .arg(&vault)
        .arg("--policy")
        .arg(&policy);
    // A broker that starts anyway would serve on: a bounded wait, then killed.
    let mut broker = Process::spawn(command, dir.path().join("broker.log"));
    let status = broker.wait(Duration::from_secs(20));
    let text = broker.output();
    assert_eq!(status.and_then(|s| s.code()), Some(64), "{text}");
    assert!(
        text.contains("set trustDomain for https://west.example"),
        "{text}"
    );
}
