//! The Vault store against a real OpenBao: KV v2 versions, metadata, writes
//! and deletions; KV v1; key selection through the real broker.

use std::collections::BTreeMap;

use coffer::{Code, SecretBytes, SecretData};
use coffer_broker::path::SecretName;
use coffer_broker::store::{
    SecretStore, SecretWrite, StoreError,
    vault::{VaultConfig, VaultStore},
};
use coffer_tests::{
    BrokerProcess, Key, POLICY, mint,
    openbao::{OpenBao, ROOT_TOKEN},
};

fn config(bao: &OpenBao) -> VaultConfig {
    let token = bao.file("root-token", ROOT_TOKEN);
    VaultConfig::from_yaml(&format!(
        "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: legacy, mount: kv1, kv: 1, path: \"\"}}\n",
        bao.addr,
        token.display()
    ))
    .unwrap()
}

fn map(pairs: &[(&str, &str)]) -> SecretData {
    SecretData::Map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::from(v.as_bytes())))
            .collect(),
    )
}

fn write(data: SecretData, cas: Option<u64>) -> SecretWrite {
    SecretWrite {
        data,
        content_type: String::new(),
        labels: BTreeMap::new(),
        cas,
    }
}

#[tokio::test]
async fn kv2_reads_latest_and_given_versions_and_metadata() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "user=app", "password=one"]);
    bao.bao(&["kv", "put", "secret/shop/db", "user=app", "password=two"]);
    let store = VaultStore::connect(config(&bao)).await.unwrap();

    let latest = store
        .get(&SecretName::valid("shop/db"), None)
        .await
        .unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.data, map(&[("password", "two"), ("user", "app")]));
    let first = store
        .get(&SecretName::valid("shop/db"), Some(1))
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    assert_eq!(first.data.key("password").unwrap().expose(), b"one");
    assert!(first.created_at > std::time::UNIX_EPOCH);

    let (current, versions) = store.versions(&SecretName::valid("shop/db")).await.unwrap();
    assert_eq!(current, 2);
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(versions.iter().all(|v| !v.deleted && !v.destroyed));

    assert!(matches!(
        store.get(&SecretName::valid("shop/db"), Some(9)).await,
        Err(StoreError::VersionNotFound(9))
    ));
    assert!(matches!(
        store.get(&SecretName::valid("shop/nothing"), None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get(&SecretName::valid("unmapped/x"), None).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn kv2_writes_new_versions_with_check_and_set() {
    let bao = OpenBao::start();
    let store = VaultStore::connect(config(&bao)).await.unwrap();

    let v1 = store
        .put(
            &SecretName::valid("shop/api"),
            write(map(&[("key", "k1")]), Some(0)),
        )
        .await
        .unwrap();
    assert_eq!(v1, 1);
    let v2 = store
        .put(
            &SecretName::valid("shop/api"),
            write(map(&[("key", "k2")]), Some(1)),
        )
        .await
        .unwrap();
    assert_eq!(v2, 2);
    assert!(matches!(
        store
            .put(
                &SecretName::valid("shop/api"),
                write(map(&[("key", "stale")]), Some(1))
            )
            .await,
        Err(StoreError::CasMismatch { current: 2 })
    ));
    // Vault itself holds the write.
    let out = bao.bao(&["kv", "get", "-field=key", "secret/shop/api"]);
    assert_eq!(out.trim(), "k2");
    assert_eq!(
        store
            .get(&SecretName::valid("shop/api"), None)
            .await
            .unwrap()
            .data,
        map(&[("key", "k2")])
    );
    // Opaque bytes go in as the single key `value`.
    store
        .put(
            &SecretName::valid("shop/blob"),
            write(SecretData::Bytes(b"raw"[..].into()), None),
        )
        .await
        .unwrap();
    assert_eq!(
        bao.bao(&["kv", "get", "-field=value", "secret/shop/blob"])
            .trim(),
        "raw"
    );
    let mut names = store.list("shop").await.unwrap();
    names.sort();
    assert_eq!(names, vec!["api", "blob"]);
}

#[tokio::test]
async fn deleted_and_destroyed_versions_are_errors_not_empty_values() {
    let bao = OpenBao::start();
    for v in ["a", "b", "c"] {
        bao.bao(&["kv", "put", "secret/shop/rot", &format!("v={v}")]);
    }
    bao.bao(&["kv", "delete", "-versions=1", "secret/shop/rot"]);
    bao.bao(&["kv", "destroy", "-versions=2", "secret/shop/rot"]);
    let store = VaultStore::connect(config(&bao)).await.unwrap();
    assert!(matches!(
        store.get(&SecretName::valid("shop/rot"), Some(1)).await,
        Err(StoreError::VersionDeleted(1))
    ));
    assert!(matches!(
        store.get(&SecretName::valid("shop/rot"), Some(2)).await,
        Err(StoreError::VersionDeleted(2))
    ));
    let (current, versions) = store
        .versions(&SecretName::valid("shop/rot"))
        .await
        .unwrap();
    assert_eq!(current, 3);
    assert!(versions[0].deleted && !versions[0].destroyed);
    assert!(versions[1].destroyed);

    // The latest version deleted: the path reads as deleted, not empty.
    bao.bao(&["kv", "delete", "secret/shop/rot"]);
    assert!(matches!(
        store.get(&SecretName::valid("shop/rot"), Some(3)).await,
        Err(StoreError::VersionDeleted(3))
    ));
    let store = VaultStore::connect(config(&bao)).await.unwrap();
    assert!(matches!(
        store.get(&SecretName::valid("shop/rot"), None).await,
        Err(StoreError::VersionDeleted(3))
    ));
}

#[tokio::test]
async fn kv1_mounts_read_and_write() {
    let bao = OpenBao::start();
    bao.bao(&["secrets", "enable", "-path=kv1", "-version=1", "kv"]);
    bao.bao(&["kv", "put", "kv1/old", "token=t1"]);
    let store = VaultStore::connect(config(&bao)).await.unwrap();
    let read = store
        .get(&SecretName::valid("legacy/old"), None)
        .await
        .unwrap();
    assert_eq!((read.version, read.data), (1, map(&[("token", "t1")])));
    assert!(matches!(
        store.get(&SecretName::valid("legacy/old"), Some(2)).await,
        Err(StoreError::VersionNotFound(2))
    ));
    store
        .put(
            &SecretName::valid("legacy/new"),
            write(map(&[("a", "b")]), None),
        )
        .await
        .unwrap();
    assert_eq!(bao.bao(&["kv", "get", "-field=a", "kv1/new"]).trim(), "b");
    assert!(matches!(
        store
            .put(
                &SecretName::valid("legacy/new"),
                write(map(&[("a", "c")]), Some(1))
            )
            .await,
        Err(StoreError::Unsupported(_))
    ));
}

#[tokio::test]
async fn the_broker_serves_a_whole_vault_map_or_one_key() {
    let bao = OpenBao::start();
    bao.bao(&[
        "kv",
        "put",
        "secret/shop/db",
        "user=app",
        "password=canary-vault-pw",
    ]);
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\n",
            token.display()
        ),
    );
    let broker = BrokerProcess::builder()
        .args([
            "--store=vault",
            "--vault-addr",
            &bao.addr,
            "--vault-config",
            config.to_str().unwrap(),
        ])
        .start();
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let whole = web.get("shop/db").await.unwrap();
    assert_eq!(whole.version(), 1);
    assert_eq!(
        whole.data(),
        &map(&[("password", "canary-vault-pw"), ("user", "app")])
    );
    let one = web.get("shop/db#password").await.unwrap();
    assert_eq!(one.expose_bytes(), Some(&b"canary-vault-pw"[..]));
    let missing = web.get("shop/db#nope").await.unwrap_err();
    assert_eq!(missing.code(), Some(Code::NotFound));
    assert!(!broker.process.output().contains("canary-vault-pw"));
}

#[tokio::test]
async fn tls_uses_the_configured_ca_and_refuses_an_unknown_one() {
    let bao = OpenBao::start_tls();
    bao.bao(&["kv", "put", "secret/shop/tls", "v=over-tls"]);
    let mut with_ca = config(&bao);
    with_ca.ca_file = bao.ca_file.clone();
    let store = VaultStore::connect(with_ca).await.unwrap();
    assert_eq!(
        store
            .get(&SecretName::valid("shop/tls"), None)
            .await
            .unwrap()
            .data,
        map(&[("v", "over-tls")])
    );
    // Without the CA the server is not trusted: no login, no fallback.
    assert!(VaultStore::connect(config(&bao)).await.is_err());
}

#[test]
fn plaintext_http_to_another_machine_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "never-sent-3a9c").unwrap();
    let config = dir.path().join("vault.yaml");
    std::fs::write(
        &config,
        format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\n",
            token.display()
        ),
    )
    .unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    // 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing is sent.
    let output = std::process::Command::new(coffer_tests::binary("coffer-broker"))
        .args(["serve", "--listen=127.0.0.1:0", "--store=vault"])
        .args(["--vault-addr", "http://192.0.2.10:8200", "--vault-config"])
        .arg(&config)
        .arg("--policy")
        .arg(&policy)
        .args(coffer_tests::default_auth_args())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "EX_USAGE");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!stderr.contains("never-sent-3a9c"));
}
