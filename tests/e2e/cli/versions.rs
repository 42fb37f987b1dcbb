//! `cofferctl delete/undelete/destroy` and `list` against the real broker,
//! on the dev store and on OpenBao, each behind its own capability.

use coffer::Code;
use coffer_tests::{
    BrokerProcess, Ctl, Key, mint, openbao::OpenBao, policy_with, rule, vault_broker,
};

/// The shared policy, and what these tests add to it.
fn policy() -> String {
    policy_with(&[
        rule(
            "admin-deletes-shop",
            "ops/admin",
            &["shop/*"],
            &["delete", "destroy"],
        ),
        rule(
            "writer-cannot-delete",
            "ops/writer",
            &["shop/*"],
            &["read", "write", "list"],
        ),
    ])
}

fn ok(ctl: &Ctl, args: &[&str]) -> String {
    ctl.ok(args, b"")
}

fn line_of(versions: &str, version: u64) -> String {
    versions
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("v{version} ")))
        .unwrap_or_default()
        .to_string()
}

async fn delete_undelete_destroy(broker: &BrokerProcess) {
    let ctl = Ctl::new(broker);
    ok(&ctl, &["put", "shop/db", "password=one"]);
    ok(&ctl, &["put", "shop/db", "password=two"]);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;

    // Without the capability: refused, nothing changes.
    let (code, _, err) = ctl.as_("ops/writer", &["delete", "shop/db"], b"");
    // Exit 4: permission denied.
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert_eq!(web.get("shop/db").await.unwrap().version(), 2);

    ok(&ctl, &["delete", "shop/db"]);
    assert!(line_of(&ok(&ctl, &["versions", "shop/db"]), 2).contains("deleted"));
    let gone = web.get("shop/db").await.unwrap_err();
    assert_eq!(gone.code(), Some(Code::NotFound), "{gone}");

    ok(&ctl, &["undelete", "shop/db", "--versions", "2"]);
    assert!(line_of(&ok(&ctl, &["versions", "shop/db"]), 2).contains("live"));
    assert_eq!(web.get("shop/db").await.unwrap().version(), 2);

    let (code, _, _) = ctl.run(&["destroy", "shop/db"], b"");
    assert_eq!(code, 2, "destroy needs explicit versions");
    ok(&ctl, &["destroy", "shop/db", "--versions", "1"]);
    assert!(line_of(&ok(&ctl, &["versions", "shop/db"]), 1).contains("destroyed"));
    let old = web.get_version("shop/db", Some(1)).await.unwrap_err();
    assert_eq!(old.code(), Some(Code::NotFound));
    // A destroyed version cannot come back.
    ok(&ctl, &["undelete", "shop/db", "--versions", "1"]);
    assert!(web.get_version("shop/db", Some(1)).await.is_err());
}

async fn list_shows_only_listable_names(broker: &BrokerProcess) {
    let ctl = Ctl::new(broker);
    ok(&ctl, &["put", "shop/db", "k=v"]);
    ok(&ctl, &["put", "shop/api", "k=v"]);
    let names = ok(&ctl, &["list", "shop"]);
    let names: Vec<&str> = names.lines().collect();
    assert!(names.contains(&"db") && names.contains(&"api"), "{names:?}");
    // The top shows the folder the operator may walk into (on Vault: from
    // the mounts' prefixes, with no Vault request).
    let top = ok(&ctl, &["list", ""]);
    assert!(top.lines().any(|l| l == "shop/"), "{top}");
    // A workload without `list` sees nothing, not even that names exist.
    let (code, out, err) = ctl.as_("shop/web", &["list", "shop"], b"");
    // Exit 4: permission denied.
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(!out.contains("db"));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_undelete_and_destroy_versions_on_the_dev_store() {
    delete_undelete_destroy(&BrokerProcess::builder().policy(&policy()).start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_undelete_and_destroy_versions_on_openbao() {
    let bao = OpenBao::start();
    delete_undelete_destroy(&vault_broker(&bao, &policy())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_only_listable_names_on_the_dev_store() {
    list_shows_only_listable_names(&BrokerProcess::builder().policy(&policy()).start()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_only_listable_names_on_openbao() {
    let bao = OpenBao::start();
    list_shows_only_listable_names(&vault_broker(&bao, &policy())).await;
}

const ROLLBACK_POLICY: &str = r#"
rules:
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, list, rollback]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_past_kv_v2s_max_versions_says_which_versions_exist() {
    let bao = OpenBao::start();
    let broker = vault_broker(&bao, ROLLBACK_POLICY);
    let ctl = Ctl::new(&broker);
    for i in 0..12 {
        ok(&ctl, &["put", "shop/kept", &format!("v=value-{i}")]);
    }
    let (code, _, err) = ctl.run(&["rollback", "shop/kept", "1"], b"");
    assert_eq!(code, 3, "still NOT_FOUND: {err}");
    assert!(err.contains("keeps versions 3 to 12"), "{err}");
    assert!(err.contains("max_versions"), "{err}");
    // A version that is kept rolls back.
    ok(&ctl, &["rollback", "shop/kept", "3"]);
}
