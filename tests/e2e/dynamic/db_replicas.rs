//! `revokeOnStart` with several broker replicas sharing one Vault role
//! (issue #22): each replica records its database leases in the lease
//! registry and, at start, revokes only what it left itself; the leases of
//! a replica that stopped heartbeating are revoked by the others; a live
//! replica's users are never touched. Real OpenBao, real PostgreSQL, real
//! brokers and sidecars (docs/dynamic.md, "Broker restarts").

use std::time::Duration;

use coffer_tests::{
    BrokerProcess, SidecarProcess, eventually,
    openbao::{OpenBao, ROOT_TOKEN},
    pod_token,
    postgres::Postgres,
};

const PATH: &str = "shop/pg";

struct Setup {
    pg: Postgres,
    bao: OpenBao,
    config: std::path::PathBuf,
}

/// PostgreSQL and OpenBao's role `shop` (TTL 60s), and a broker config
/// with a fast lease registry: a heartbeat a second, stale after three.
fn setup() -> Setup {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    pg.configure_openbao(&bao, "shop", "60s", "300s");
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: {PATH}, mount: database, type: database, role: shop, grace: 30s}}\nleaseRegistry: {{heartbeat: 1s, expireAfter: 3s}}\n",
            bao.addr,
            token.display()
        ),
    );
    Setup { pg, bao, config }
}

impl Setup {
    /// A broker replica named `id`.
    fn replica(&self, id: &str) -> BrokerProcess {
        let config = self.config.display().to_string();
        BrokerProcess::builder()
            .args([
                "--store=vault",
                "--vault-config",
                &config,
                "--replica-id",
                id,
            ])
            .start()
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
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        value["username"].as_str().unwrap().to_string(),
        value["password"].as_str().unwrap().to_string(),
    )
}

#[test]
fn restarting_one_replica_revokes_its_own_leftovers_and_never_the_other_replicas_users() {
    let s = setup();
    let mut a = s.replica("broker-a");
    let b = s.replica("broker-b");
    let mut on_a = sidecar(&a, "web-a");
    let on_b = sidecar(&b, "web-b");
    let (user_a, pass_a) = creds(&on_a);
    let (user_b, pass_b) = creds(&on_b);
    assert!(s.pg.can_login(&user_a, &pass_a));
    assert!(s.pg.can_login(&user_b, &pass_b));
    // Each replica's record names its own lease.
    let record = s
        .bao
        .bao(&["kv", "get", "-format=json", "secret/coffer-leases/broker-b"]);
    assert!(record.contains("database/creds/shop/"), "{record}");

    // Replica a crashes and comes back under its name (a StatefulSet pod).
    a.process.kill();
    on_a.process.kill();
    let a = s.replica("broker-a");
    // At start, before anyone reads through it: its own leftover goes.
    eventually(Duration::from_secs(20), "a's leftover user revoked", || {
        (!s.pg.can_login(&user_a, &pass_a)).then_some(())
    });
    // A new pod's first read through the restarted replica revokes nothing.
    let on_a_again = sidecar(&a, "web-c");
    let (user_c, pass_c) = creds(&on_a_again);
    assert!(s.pg.can_login(&user_c, &pass_c));
    // Past expireAfter, while b heartbeats: b's user stays.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        s.pg.can_login(&user_b, &pass_b),
        "the other replica's database user can still log in"
    );
    assert!(s.pg.can_login(&user_c, &pass_c));
    assert_eq!(creds(&on_b).0, user_b, "b's pod kept its user");
}

#[test]
fn the_leases_of_a_replica_gone_for_good_are_revoked_by_a_new_replica() {
    let s = setup();
    let mut old = s.replica("coffer-broker-6d9f-old");
    let mut pod = sidecar(&old, "web-a");
    let (user, pass) = creds(&pod);
    assert!(s.pg.can_login(&user, &pass));
    // A Deployment's pod dies and is replaced by one with another name.
    old.process.kill();
    pod.process.kill();
    let new = s.replica("coffer-broker-6d9f-new");
    eventually(
        Duration::from_secs(30),
        "the dead replica's user revoked",
        || (!s.pg.can_login(&user, &pass)).then_some(()),
    );
    // Its record is gone with it.
    let (found, _, _) = s.bao.try_bao(
        &["kv", "get", "secret/coffer-leases/coffer-broker-6d9f-old"],
        "",
    );
    assert!(!found, "the stale record was removed");
    drop(new);
}
