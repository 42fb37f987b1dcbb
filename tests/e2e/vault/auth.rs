//! The broker's own Vault identity against a real OpenBao: a renewed token
//! file, AppRole (including a fresh login at the max TTL, the failure of
//! hashicorp/vault#6659), JWT login with the service-account token, and a
//! fresh login after the token is revoked.

use std::time::Duration;

use coffer_broker::path::SecretName;
use coffer_broker::store::{
    SecretStore,
    vault::{VaultConfig, VaultStore},
};
use coffer_tests::{
    ISSUER, Key, fixture, mint,
    openbao::{OpenBao, serve_json},
};

const BROKER_POLICY: &str = r#"
path "secret/data/shop/*" { capabilities = ["read", "create", "update"] }
path "secret/metadata/shop/*" { capabilities = ["read", "list"] }
"#;

/// A server with the broker's policy and one secret.
fn server() -> OpenBao {
    let bao = OpenBao::start();
    bao.policy("coffer-broker", BROKER_POLICY);
    bao.bao(&["kv", "put", "secret/shop/db", "password=p"]);
    bao
}

/// No value cache, so every read goes to Vault with the current token.
fn config(bao: &OpenBao, auth: &str) -> VaultConfig {
    VaultConfig::from_yaml(&format!(
        "address: {}\nauth: {auth}\nmounts: [{{prefix: shop, mount: secret}}]\ncache: {{ttl: 0s}}\nlimits: {{maxRetries: 1}}\n",
        bao.addr
    ))
    .unwrap()
}

fn approle(bao: &OpenBao, ttl: &str, max_ttl: &str) -> String {
    bao.bao(&["auth", "enable", "approle"]);
    bao.bao(&[
        "write",
        "auth/approle/role/coffer-broker",
        "token_policies=coffer-broker",
        &format!("token_ttl={ttl}"),
        &format!("token_max_ttl={max_ttl}"),
    ]);
    let role_id = bao.bao(&[
        "read",
        "-field=role_id",
        "auth/approle/role/coffer-broker/role-id",
    ]);
    let secret_id = bao.bao(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/coffer-broker/secret-id",
    ]);
    let role_file = bao.file("role-id", role_id.trim());
    let secret_file = bao.file("secret-id", secret_id.trim());
    format!(
        "{{method: approle, roleIdFile: {}, secretIdFile: {}}}",
        role_file.display(),
        secret_file.display()
    )
}

async fn reads(store: &VaultStore) -> bool {
    store
        .get(&SecretName::valid("shop/db"), None)
        .await
        .is_ok_and(|s| s.data.key("password").is_some_and(|p| p.expose() == b"p"))
}

#[tokio::test]
async fn a_token_file_is_renewed_before_it_expires() {
    let bao = server();
    let token = bao.bao(&[
        "token",
        "create",
        "-policy=coffer-broker",
        "-ttl=3s",
        "-explicit-max-ttl=5m",
        "-field=token",
    ]);
    let file = bao.file("token", token.trim());
    let store = VaultStore::connect(config(
        &bao,
        &format!("{{method: token, tokenFile: {}}}", file.display()),
    ))
    .await
    .unwrap();
    assert!(reads(&store).await);
    // Twice the token's TTL: without renewal it would have expired.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(reads(&store).await, "the renewed token still reads");
    assert!(bao.audited("update", "auth/token/renew-self") >= 1);
}

#[tokio::test]
async fn approle_logs_in_and_logs_in_again_at_the_max_ttl() {
    let bao = server();
    let auth = approle(&bao, "2s", "4s");
    let store = VaultStore::connect(config(&bao, &auth)).await.unwrap();
    assert!(reads(&store).await);
    assert_eq!(bao.audited("update", "auth/approle/login"), 1);
    // Past the max TTL: renewal alone cannot keep a token this long.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(reads(&store).await, "reads after the first token's max TTL");
    assert!(bao.audited("update", "auth/approle/login") >= 2);
}

#[tokio::test]
async fn a_revoked_token_leads_to_a_fresh_login() {
    let bao = server();
    let auth = approle(&bao, "1h", "2h");
    let store = VaultStore::connect(config(&bao, &auth)).await.unwrap();
    assert!(reads(&store).await);
    bao.bao(&["token", "revoke", "-mode=path", "auth/approle/login"]);
    assert!(reads(&store).await, "reads again after the revocation");
    assert_eq!(bao.audited("update", "auth/approle/login"), 2);
}

fn jwt_auth(bao: &OpenBao) {
    bao.bao(&["auth", "enable", "jwt"]);
    let jwks = std::fs::read_to_string(fixture("jwks-a.json")).unwrap();
    let url = serve_json(jwks);
    bao.bao(&[
        "write",
        "auth/jwt/config",
        &format!("jwks_url={url}"),
        &format!("bound_issuer={ISSUER}"),
    ]);
    bao.bao(&[
        "write",
        "auth/jwt/role/coffer-broker",
        "role_type=jwt",
        "bound_audiences=coffer",
        "user_claim=sub",
        "bound_subject=system:serviceaccount:coffer:broker",
        "token_policies=coffer-broker",
        "token_ttl=1h",
    ]);
}

#[tokio::test]
async fn the_broker_logs_in_with_its_service_account_token() {
    let bao = server();
    jwt_auth(&bao);
    let file = bao.file("sa-token", &mint(Key::Rsa, "coffer", "broker"));
    let auth = format!(
        "{{method: jwt, role: coffer-broker, tokenFile: {}}}",
        file.display()
    );
    let store = VaultStore::connect(config(&bao, &auth)).await.unwrap();
    assert!(reads(&store).await);
    assert_eq!(bao.audited("update", "auth/jwt/login"), 1);
}

#[tokio::test]
async fn a_service_account_token_vault_does_not_trust_is_refused() {
    let bao = server();
    jwt_auth(&bao);
    for (name, token) in [
        ("foreign-key", mint(Key::ForeignRsa, "coffer", "broker")),
        ("other-sa", mint(Key::Rsa, "coffer", "intruder")),
    ] {
        let file = bao.file(name, &token);
        let auth = format!(
            "{{method: jwt, role: coffer-broker, tokenFile: {}}}",
            file.display()
        );
        assert!(
            VaultStore::connect(config(&bao, &auth)).await.is_err(),
            "{name}"
        );
    }
}
