//! Showing a page reads no secret: the console takes the rotation spec from
//! `ListVersions` (the `coffer.rotate/*` labels, from the secret's metadata),
//! never from a `GetSecret`, so looking at a leased path (a database login,
//! a certificate) issues nothing to the operator.

use std::time::Duration;

use coffer_tests::{
    BrokerProcess, Key,
    console::{Console, admin_policy},
    eventually, mint,
    openbao::{OpenBao, ROOT_TOKEN},
    postgres::Postgres,
};

const GET_SECRET: &str = "coffer.v1.SecretBroker/GetSecret";

/// Every page and JSON answer of the console for `path`.
const PAGES: [&str; 4] = ["/", "/api/secrets", "/secret/{}", "/api/secret/{}"];

/// `coffer_grpc_requests_total` for `rpc`, every status summed.
fn requests(broker: &BrokerProcess, rpc: &str) -> f64 {
    let needle = format!("coffer_grpc_requests_total{{rpc=\"{rpc}\"");
    broker
        .metrics()
        .lines()
        .filter(|l| l.starts_with(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// A broker with `--metrics-listen` and `extra` flags.
fn broker_with_metrics(extra: &[String]) -> BrokerProcess {
    BrokerProcess::builder()
        .policy(&admin_policy())
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .start()
}

/// Loads every page of `path`; returns them, concatenated.
fn load_every_page(console: &Console, path: &str) -> String {
    let mut seen = String::new();
    for page in PAGES {
        let (code, body) = console.get(&page.replace("{}", path));
        seen.push_str(&format!("--- {page} ({code})\n{body}\n"));
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_load_shows_the_rotation_spec_without_reading_the_secret() {
    let broker = broker_with_metrics(&[]);
    broker.put_map("shop/db", &[("password", "first")]).await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let rotate = coffer::operator::Rotate::new("shop/db").length(40);
    assert_eq!(admin.rotate(rotate).await.unwrap(), 2);
    let console = Console::start(&broker, ("ops", "admin"));

    let seen = load_every_page(&console, "shop/db");
    let (_, overview) = console.get("/");
    assert!(overview.contains("length=40"), "the spec shows: {overview}");
    let (_, page) = console.get("/secret/shop/db");
    assert!(page.contains("length=40"), "the spec shows: {page}");
    let listed = requests(&broker, "coffer.v1.SecretOperator/ListVersions");
    assert!(
        listed >= 4.0,
        "the pages asked ListVersions ({listed}):\n{seen}"
    );
    assert_eq!(
        requests(&broker, GET_SECRET),
        0.0,
        "a page load read the secret:\n{}",
        broker.metrics()
    );
}

#[test]
fn the_page_of_a_leased_path_issues_no_credential() {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    pg.configure_openbao(&bao, "shop", "1h", "2h");
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: shop/pg, mount: database, type: database, role: shop}}\n",
            bao.addr,
            token.display()
        ),
    );
    let broker = broker_with_metrics(&[
        "--store=vault".into(),
        "--vault-config".into(),
        config.display().to_string(),
    ]);
    let leases = || {
        let (listed, out, _) = bao.try_bao(
            &[
                "list",
                "-format=json",
                "sys/leases/lookup/database/creds/shop",
            ],
            "",
        );
        if listed {
            serde_json::from_str::<Vec<String>>(&out)
                .unwrap_or_default()
                .len()
        } else {
            0
        }
    };
    let console = Console::start(&broker, ("ops", "admin"));
    // The console is up and talking to the broker.
    eventually(Duration::from_secs(20), "the overview", || {
        (console.get("/").0 == 200).then_some(())
    });

    let seen = load_every_page(&console, "shop/pg");
    assert_eq!(
        leases(),
        0,
        "looking at shop/pg created a database login:\n{seen}"
    );
    assert_eq!(
        requests(&broker, GET_SECRET),
        0.0,
        "a page load read the secret:\n{seen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_vault_the_spec_comes_from_the_secrets_metadata() {
    let bao = OpenBao::start();
    let config = bao.file("vault.yaml", &bao.config_yaml(""));
    let broker = broker_with_metrics(&[
        "--store=vault".into(),
        "--vault-config".into(),
        config.display().to_string(),
    ]);
    broker.put_map("shop/db", &[("password", "first")]).await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let rotate = coffer::operator::Rotate::new("shop/db").length(40);
    assert_eq!(admin.rotate(rotate).await.unwrap(), 2);
    let versions = admin.versions("shop/db").await.unwrap();
    assert_eq!(
        versions
            .rotation_labels
            .get("coffer.rotate/length")
            .map(String::as_str),
        Some("40"),
        "{versions:?}"
    );
    // Rotating read the value; from here on nothing may.
    let reads_before = bao.audited("read", "secret/data/shop/db");
    let console = Console::start(&broker, ("ops", "admin"));
    let seen = load_every_page(&console, "shop/db");
    let (_, page) = console.get("/secret/shop/db");
    assert!(page.contains("length=40"), "{page}");
    assert_eq!(
        requests(&broker, GET_SECRET),
        0.0,
        "a page load read the secret:\n{seen}"
    );
    assert_eq!(
        bao.audited("read", "secret/data/shop/db"),
        reads_before,
        "the broker read the value from OpenBao for a page"
    );
}
