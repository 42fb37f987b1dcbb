//! `cofferctl delete/undelete/destroy` and `list` against the real broker,
//! on the dev store and on OpenBao, each behind its own capability.

use std::{path::PathBuf, process::Command};

use coffer::Code;
use coffer_tests::{
    BrokerProcess, Key, binary, mint,
    openbao::{OpenBao, ROOT_TOKEN},
};

const POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, list, delete, destroy]
  - name: writer-cannot-delete
    subjects: [{namespace: ops, serviceAccount: writer}]
    paths: ["shop/*"]
    capabilities: [read, write, list]
"#;

struct Ctl {
    broker: String,
    dir: tempfile::TempDir,
}

impl Ctl {
    fn new(broker: &BrokerProcess) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sa in ["admin", "writer", "web"] {
            let ns = if sa == "web" { "shop" } else { "ops" };
            std::fs::write(dir.path().join(sa), mint(Key::Rsa, ns, sa)).unwrap();
        }
        Self {
            broker: broker.endpoint.clone(),
            dir,
        }
    }

    fn as_(&self, who: &str, args: &[&str]) -> (i32, String, String) {
        let token: PathBuf = self.dir.path().join(who);
        let out = Command::new(binary("cofferctl"))
            .arg("--broker")
            .arg(&self.broker)
            .arg("--token-file")
            .arg(token)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.as_("admin", args);
        assert_eq!(code, 0, "cofferctl {args:?}: {out}{err}");
        out
    }
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
    ctl.ok(&["put", "shop/db", "password=one"]);
    ctl.ok(&["put", "shop/db", "password=two"]);
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;

    // Without the capability: refused, nothing changes.
    let (code, _, err) = ctl.as_("writer", &["delete", "shop/db"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert_eq!(web.get("shop/db").await.unwrap().version(), 2);

    ctl.ok(&["delete", "shop/db"]);
    assert!(line_of(&ctl.ok(&["versions", "shop/db"]), 2).contains("deleted"));
    let gone = web.get("shop/db").await.unwrap_err();
    assert_eq!(gone.code(), Some(Code::NotFound), "{gone}");

    ctl.ok(&["undelete", "shop/db", "--versions", "2"]);
    assert!(line_of(&ctl.ok(&["versions", "shop/db"]), 2).contains("live"));
    assert_eq!(web.get("shop/db").await.unwrap().version(), 2);

    let (code, _, _) = ctl.as_("admin", &["destroy", "shop/db"]);
    assert_eq!(code, 2, "destroy needs explicit versions");
    ctl.ok(&["destroy", "shop/db", "--versions", "1"]);
    assert!(line_of(&ctl.ok(&["versions", "shop/db"]), 1).contains("destroyed"));
    let old = web.get_version("shop/db", Some(1)).await.unwrap_err();
    assert_eq!(old.code(), Some(Code::NotFound));
    // A destroyed version cannot come back.
    ctl.ok(&["undelete", "shop/db", "--versions", "1"]);
    assert!(web.get_version("shop/db", Some(1)).await.is_err());
}

async fn list_shows_only_listable_names(broker: &BrokerProcess) {
    let ctl = Ctl::new(broker);
    ctl.ok(&["put", "shop/db", "k=v"]);
    ctl.ok(&["put", "shop/api", "k=v"]);
    let names = ctl.ok(&["list", "shop"]);
    let names: Vec<&str> = names.lines().collect();
    assert!(names.contains(&"db") && names.contains(&"api"), "{names:?}");
    // A workload without `list` sees nothing, not even that names exist.
    let (code, out, err) = ctl.as_("web", &["list", "shop"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(!out.contains("db"));
}

fn vault_broker(bao: &OpenBao) -> BrokerProcess {
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\n",
            token.display()
        ),
    );
    BrokerProcess::start_with(
        POLICY,
        &[
            "--store=vault",
            "--vault-addr",
            &bao.addr,
            "--vault-config",
            config.to_str().unwrap(),
        ],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_undelete_and_destroy_versions_on_the_dev_store() {
    delete_undelete_destroy(&BrokerProcess::start(POLICY)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_undelete_and_destroy_versions_on_openbao() {
    let bao = OpenBao::start();
    delete_undelete_destroy(&vault_broker(&bao)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_only_listable_names_on_the_dev_store() {
    list_shows_only_listable_names(&BrokerProcess::start(POLICY)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_only_listable_names_on_openbao() {
    let bao = OpenBao::start();
    list_shows_only_listable_names(&vault_broker(&bao)).await;
}
