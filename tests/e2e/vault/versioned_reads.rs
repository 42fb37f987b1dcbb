//! Reading an old version through the real broker never poisons the Vault
//! store's "latest" cache entry.

use coffer_tests::{BrokerProcess, Key, mint, openbao::OpenBao};

#[tokio::test]
async fn reading_version_one_first_on_a_cold_path_does_not_make_it_latest() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "v=one"]);
    bao.bao(&["kv", "put", "secret/shop/db", "v=two"]);
    let config = bao.file("vault.yaml", &bao.config_yaml("cache: {ttl: 60s}\n"));
    // A fresh broker: nothing cached, no metadata seen.
    let broker = BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", config.to_str().unwrap()])
        .start();
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;

    let old = web.get_version("shop/db", Some(1)).await.unwrap();
    assert_eq!(old.version(), 1);
    assert_eq!(old.data().key("v").unwrap().expose(), b"one");

    let latest = web.get("shop/db").await.unwrap();
    assert_eq!(latest.version(), 2);
    assert_eq!(latest.data().key("v").unwrap().expose(), b"two");
}
