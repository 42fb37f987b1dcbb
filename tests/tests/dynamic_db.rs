//! Leased database credentials end to end: real OpenBao (database engine),
//! real PostgreSQL, real broker and sidecars; each pod gets its own login,
//! renewed while it watches, rotated before `max_ttl`, revoked after it
//! leaves (docs/dynamic.md).

use std::time::Duration;

use coffer_tests::{
    BrokerProcess, POLICY, SidecarProcess, eventually,
    openbao::{OpenBao, ROOT_TOKEN},
    operator::pod_token,
    postgres::Postgres,
};

/// The broker path of the leased credentials (inside the test policy's `shop/*`).
const PATH: &str = "shop/pg";

struct Setup {
    pg: Postgres,
    bao: OpenBao,
    config: std::path::PathBuf,
}

/// PostgreSQL, and OpenBao's role `shop` on it with these TTLs; the broker's
/// Vault config maps `shop/pg` to it with `grace`.
fn setup(default_ttl: &str, max_ttl: &str, grace: &str) -> Setup {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    pg.configure_openbao(&bao, "shop", default_ttl, max_ttl);
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: {PATH}, mount: database, type: database, role: shop, grace: {grace}}}\n",
            bao.addr,
            token.display()
        ),
    );
    Setup { pg, bao, config }
}

impl Setup {
    fn broker(&self) -> BrokerProcess {
        let config = self.config.display().to_string();
        BrokerProcess::start_with(POLICY, &["--store=vault", "--vault-config", &config])
    }

    /// How many leases OpenBao holds for the role.
    fn leases(&self) -> usize {
        let (ok, out, _) = self.bao.try_bao(
            &[
                "list",
                "-format=json",
                "sys/leases/lookup/database/creds/shop",
            ],
            "",
        );
        if !ok {
            return 0;
        }
        serde_json::from_str::<Vec<String>>(&out).map_or(0, |v| v.len())
    }
}

fn sidecar(broker: &BrokerProcess, pod: &str) -> SidecarProcess {
    let sidecar = SidecarProcess::start(
        broker,
        &pod_token(pod),
        &format!("  - {{path: {PATH}, file: creds.json, format: json}}\n"),
        &[],
    );
    sidecar.wait_for_files(&["creds.json"], Duration::from_secs(30));
    sidecar
}

/// (username, password) from a sidecar's file.
fn creds(sidecar: &SidecarProcess) -> (String, String) {
    let text = std::fs::read_to_string(sidecar.file("creds.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("creds.json is not whole JSON ({e}): the write was not atomic"));
    (
        value["username"].as_str().unwrap().to_string(),
        value["password"].as_str().unwrap().to_string(),
    )
}

fn assert_not_logged(passwords: &[&str], outputs: &[(&str, String)]) {
    for password in passwords {
        for (name, output) in outputs {
            assert!(
                !output.contains(password),
                "a generated password appears in the {name} log"
            );
        }
    }
}

#[test]
fn two_pods_get_their_own_users_and_renewal_keeps_them_past_the_ttl() {
    let s = setup("4s", "60s", "2s");
    let broker = s.broker();
    let a = sidecar(&broker, "web-a");
    let b = sidecar(&broker, "web-b");
    let (user_a, pass_a) = creds(&a);
    let (user_b, pass_b) = creds(&b);
    assert_ne!(user_a, user_b, "each pod gets its own database user");
    assert!(s.pg.can_login(&user_a, &pass_a), "pod a logs in");
    assert!(s.pg.can_login(&user_b, &pass_b), "pod b logs in");

    // Twice the initial TTL: only renewal keeps the users valid.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(creds(&a).0, user_a, "renewed, not replaced");
    assert!(s.pg.can_login(&user_a, &pass_a), "renewed past the TTL");
    assert!(s.pg.can_login(&user_b, &pass_b), "renewed past the TTL");
    assert!(!s.pg.can_login(&user_a, "wrong"), "the check can fail");

    assert_not_logged(
        &[&pass_a, &pass_b],
        &[
            ("broker", broker.process.output()),
            ("sidecar a", a.process.output()),
            ("sidecar b", b.process.output()),
            ("postgres", s.pg.output()),
        ],
    );
}

#[test]
fn stopping_a_sidecar_revokes_its_user_within_the_grace() {
    let s = setup("30s", "120s", "2s");
    let broker = s.broker();
    let mut a = sidecar(&broker, "web-a");
    let b = sidecar(&broker, "web-b");
    let (user_a, pass_a) = creds(&a);
    let (user_b, pass_b) = creds(&b);
    assert!(s.pg.can_login(&user_a, &pass_a));
    assert_eq!(s.leases(), 2);

    a.process.kill();
    eventually(Duration::from_secs(20), "pod a's user revoked", || {
        (!s.pg.can_login(&user_a, &pass_a)).then_some(())
    });
    assert!(s.pg.can_login(&user_b, &pass_b), "pod b keeps its user");
    assert_eq!(s.leases(), 1, "only pod b's lease is left");
    assert!(broker.process.output().contains("revoked a lease"));
    assert_not_logged(
        &[&pass_a, &pass_b],
        &[
            ("broker", broker.process.output()),
            ("sidecar b", b.process.output()),
        ],
    );
}

#[test]
fn the_credential_rotates_before_max_ttl_and_the_file_follows() {
    let s = setup("3s", "9s", "2s");
    let broker = s.broker();
    let a = sidecar(&broker, "web-a");
    let (first_user, first_pass) = creds(&a);
    // Every read of the file on the way is whole JSON (creds() panics
    // otherwise): the sidecar swaps it atomically.
    let (user, pass) = eventually(Duration::from_secs(15), "a new credential", || {
        let (user, pass) = creds(&a);
        (user != first_user).then_some((user, pass))
    });
    assert!(s.pg.can_login(&user, &pass), "the rotated credential works");
    assert_not_logged(
        &[&first_pass, &pass],
        &[
            ("broker", broker.process.output()),
            ("sidecar", a.process.output()),
        ],
    );
}

#[test]
fn a_broker_restart_leaves_no_orphaned_leases() {
    let s = setup("30s", "120s", "2s");
    let mut broker = s.broker();
    let _a = sidecar(&broker, "web-a");
    assert_eq!(s.leases(), 1);
    // A crash: the broker cannot revoke anything.
    broker.process.kill();
    let broker = s.broker();
    let b = sidecar(&broker, "web-b");
    let (user, pass) = creds(&b);
    assert!(s.pg.can_login(&user, &pass));
    assert_eq!(s.leases(), 1, "the crashed broker's lease was revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_sees_the_lease_expiry_and_the_same_pod_gets_the_same_user() {
    let s = tokio::task::spawn_blocking(|| setup("30s", "120s", "2s"))
        .await
        .unwrap();
    let broker = s.broker();
    let client = broker.client(pod_token("web-a")).await;
    let mut updates = client.watch([PATH]).await.unwrap();
    let first = updates.next().await.unwrap().unwrap();
    let secret = &first.secrets[0];
    let ttl = secret.ttl_hint().expect("a leased secret carries its TTL");
    assert!(ttl <= Duration::from_secs(30) && ttl > Duration::from_secs(20));
    let expires: u64 = secret.labels()[coffer_broker::store::vault::LEASE_EXPIRES_LABEL]
        .parse()
        .unwrap();
    assert!(expires > 0);
    // The same pod reading again gets its own credential, not a new one.
    let again = client.get(PATH).await.unwrap();
    assert_eq!(again.key("username"), secret.key("username"));
    // Another pod of the same service account gets another.
    let other = broker
        .client(pod_token("web-b"))
        .await
        .get(PATH)
        .await
        .unwrap();
    assert_ne!(other.key("username"), secret.key("username"));
}

#[test]
fn vault_down_at_renewal_keeps_the_last_credential_until_it_expires() {
    let s = setup("10s", "60s", "2s");
    let broker = s.broker();
    let a = sidecar(&broker, "web-a");
    let (user, pass) = creds(&a);
    s.bao.seal();
    // The renewal at 2/3 of the lease fails; the credential stays.
    broker.wait_for_log("lease renewal failed", 1);
    assert_eq!(creds(&a), (user.clone(), pass.clone()), "the file is kept");
    assert!(s.pg.can_login(&user, &pass), "still valid until its expiry");
    // Nothing renews it: PostgreSQL refuses it after the lease's end.
    eventually(
        Duration::from_secs(15),
        "the unrenewed user expires",
        || (!s.pg.can_login(&user, &pass)).then_some(()),
    );
}
