//! Leased database credentials end to end: real OpenBao (database engine),
//! real PostgreSQL, real broker and sidecars; each pod gets its own login,
//! renewed while it watches, rotated before `max_ttl`, revoked after it
//! leaves (docs/dynamic.md).

use std::time::Duration;

use coffer_tests::{
    BrokerProcess, Ctl, SidecarProcess, eventually,
    openbao::{OpenBao, ROOT_TOKEN},
    pod_token,
    postgres::Postgres,
};
use serde_json::Value;

/// The test policy, plus `list` and `revoke` on `shop/*` for `ops/admin`.
const LEASE_POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop-leases
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, list, status, revoke]
"#;

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
        BrokerProcess::builder()
            .args(["--store=vault", "--vault-config", &config])
            .start()
    }

    /// A broker with [`LEASE_POLICY`], its `/metrics` and `extra` flags.
    fn lease_broker(&self, extra: &[&str]) -> BrokerProcess {
        BrokerProcess::builder()
            .policy(LEASE_POLICY)
            .args([
                "--store=vault".as_ref(),
                "--vault-config".as_ref(),
                self.config.as_os_str(),
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .start()
    }

    /// How many leases OpenBao holds for the role.
    fn leases(&self) -> usize {
        self.lease_ids().len()
    }

    /// The ids of the leases OpenBao holds for the role, as OpenBao lists them.
    fn lease_ids(&self) -> Vec<String> {
        let (ok, out, _) = self.bao.try_bao(
            &[
                "list",
                "-format=json",
                "sys/leases/lookup/database/creds/shop",
            ],
            "",
        );
        if !ok {
            return Vec::new();
        }
        serde_json::from_str::<Vec<String>>(&out)
            .unwrap_or_default()
            .into_iter()
            .map(|suffix| format!("database/creds/shop/{suffix}"))
            .collect()
    }
}

/// `cofferctl leases --output json [args]` as `who`: the leases.
fn leases_as(ctl: &Ctl, who: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["leases", "--output", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = ctl.as_(who, &all, b"");
    assert_eq!(code, 0, "cofferctl leases: {out}{err}");
    let value: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["truncated"], false);
    value["leases"].as_array().unwrap().clone()
}

/// The audit trail's records.
fn audit_records(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The value of the broker's metric sample `name{labels}` (0 if absent).
fn metric(broker: &BrokerProcess, sample: &str) -> f64 {
    broker
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
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
    assert_eq!(again.expose_key("username"), secret.expose_key("username"));
    // Another pod of the same service account gets another.
    let other = broker
        .client(pod_token("web-b"))
        .await
        .get(PATH)
        .await
        .unwrap();
    assert_ne!(other.expose_key("username"), secret.expose_key("username"));
}

#[test]
fn vault_down_at_renewal_keeps_the_last_credential_until_it_expires() {
    let s = setup("10s", "60s", "2s");
    let broker = s.lease_broker(&[]);
    let ctl = Ctl::new(&broker);
    let a = sidecar(&broker, "web-a");
    let (user, pass) = creds(&a);
    let listed = leases_as(&ctl, "ops/admin", &[]);
    assert_eq!(listed[0]["renewal"], "ok");
    assert_eq!(metric(&broker, "coffer_leases{state=\"ok\"}"), 1.0);
    s.bao.seal();
    // The renewal at 2/3 of the lease fails; the credential stays.
    broker.wait_for_log("lease renewal failed", 1);
    assert_eq!(creds(&a), (user.clone(), pass.clone()), "the file is kept");
    assert!(s.pg.can_login(&user, &pass), "still valid until its expiry");
    // Status and metrics say so, with the kind of failure and no more.
    let listed = leases_as(&ctl, "ops/admin", &[]);
    assert_eq!(listed[0]["renewal"], "failing", "{listed:?}");
    assert_eq!(listed[0]["failureKind"], "unavailable");
    assert_ne!(listed[0]["failingSince"], "-");
    assert_eq!(metric(&broker, "coffer_leases{state=\"failing\"}"), 1.0);
    assert_eq!(metric(&broker, "coffer_leases{state=\"ok\"}"), 0.0);
    assert!(metric(&broker, "coffer_lease_renewals_total{result=\"error\"}") >= 1.0);
    // Nothing renews it: PostgreSQL refuses it after the lease's end.
    eventually(
        Duration::from_secs(15),
        "the unrenewed user expires",
        || (!s.pg.can_login(&user, &pass)).then_some(()),
    );
}

#[test]
fn the_audit_trail_names_each_lease_and_never_the_password() {
    let s = setup("30s", "120s", "2s");
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = s.lease_broker(&["--audit-file", audit.to_str().unwrap()]);
    let mut a = sidecar(&broker, "web-a");
    let (_, pass) = creds(&a);
    let ids = s.lease_ids();
    assert_eq!(ids.len(), 1);
    let lease = &ids[0];
    // The broker's own issue (written by a background task), with the owner.
    let records = eventually(Duration::from_secs(10), "the issue record", || {
        let records = audit_records(&audit);
        records
            .iter()
            .any(|r| {
                r["rpc"] == "LeaseIssue"
                    && r["actor"] == "broker"
                    && r["lease_id"] == lease.as_str()
                    && r["reason"] == "first_read"
                    && r["owner"]["pod"] == "web-a"
            })
            .then_some(records)
    });
    // The watch that handed the credential out names its lease.
    assert!(
        records.iter().any(|r| r["rpc"] == "WatchSecrets"
            && r["path"] == PATH
            && r["decision"] == "allow"
            && r["version"] == 1
            && r["lease_id"] == lease.as_str()),
        "no watch record with the lease id: {records:?}"
    );
    // The pod leaves: the revocation is recorded with its reason.
    a.process.kill();
    eventually(Duration::from_secs(20), "the revocation record", || {
        audit_records(&audit)
            .iter()
            .any(|r| {
                r["rpc"] == "LeaseRevoke"
                    && r["actor"] == "broker"
                    && r["lease_id"] == lease.as_str()
                    && r["reason"] == "holder_gone"
            })
            .then_some(())
    });
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(coffer_broker::audit::verify([("audit.log", text.as_bytes())]).is_ok());
    assert_not_logged(
        &[&pass],
        &[("audit", text), ("broker", broker.process.output())],
    );
}

#[test]
fn an_operator_lists_two_pods_leases_with_their_owners_and_filters_by_path() {
    let s = setup("30s", "120s", "2s");
    let broker = s.lease_broker(&[]);
    let ctl = Ctl::new(&broker);
    let _a = sidecar(&broker, "web-a");
    let _b = sidecar(&broker, "web-b");
    let listed = leases_as(&ctl, "ops/admin", &[]);
    let mut ids: Vec<&str> = listed
        .iter()
        .map(|l| l["leaseId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut bao_ids = s.lease_ids();
    bao_ids.sort();
    assert_eq!(ids, bao_ids, "the same leases OpenBao lists");
    let mut pods: Vec<&str> = listed
        .iter()
        .map(|l| l["owner"]["pod"].as_str().unwrap())
        .collect();
    pods.sort_unstable();
    assert_eq!(pods, ["web-a", "web-b"]);
    for lease in &listed {
        assert_eq!(lease["path"], PATH);
        assert_eq!(lease["owner"]["namespace"], "shop");
        assert_eq!(lease["owner"]["serviceAccount"], "web");
        assert_eq!(lease["version"], 1);
        assert_eq!(lease["renewal"], "ok");
    }
    assert_eq!(leases_as(&ctl, "ops/admin", &["--path", "shop"]).len(), 2);
    assert_eq!(leases_as(&ctl, "ops/admin", &["--path", PATH]).len(), 2);
    assert!(leases_as(&ctl, "ops/admin", &["--path", "shop/p"]).is_empty());
    assert!(leases_as(&ctl, "ops/admin", &["--path", "other"]).is_empty());
    // Without `list` on the path, nothing is shown.
    assert!(leases_as(&ctl, "shop/web", &[]).is_empty());
    // The table names the same leases.
    let (code, table, _) = ctl.run(&["leases"], b"");
    assert_eq!(code, 0);
    assert!(
        bao_ids.iter().all(|id| table.contains(id.as_str())),
        "{table}"
    );
    assert!(table.contains("shop/web/web-a"));
}

#[test]
fn revoking_without_the_capability_is_denied_alike_for_known_and_unknown_leases() {
    let s = setup("30s", "120s", "2s");
    let broker = s.lease_broker(&[]);
    let ctl = Ctl::new(&broker);
    let _a = sidecar(&broker, "web-a");
    let lease = s.lease_ids().remove(0);
    let unknown = "database/creds/shop/no-such-lease";
    // The workload's own token has read and watch, not revoke.
    assert_eq!(ctl.as_("shop/web", &["revoke", &lease], b"").0, 4);
    assert_eq!(ctl.as_("shop/web", &["revoke", unknown], b"").0, 4);
    assert_eq!(s.leases(), 1, "nothing was revoked");
    // The operator learns that an unknown lease does not exist.
    assert_eq!(ctl.run(&["revoke", unknown], b"").0, 3);
}

#[test]
fn a_revoked_lease_ends_the_user_and_the_sidecar_gets_a_new_working_credential() {
    let s = setup("30s", "120s", "2s");
    let broker = s.lease_broker(&[]);
    let ctl = Ctl::new(&broker);
    let a = sidecar(&broker, "web-a");
    let (user, pass) = creds(&a);
    let lease = s.lease_ids().remove(0);
    let out = ctl.ok(&["revoke", &lease, "--output", "json"], b"");
    let revoked: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(revoked["revoked"]["leaseId"], lease.as_str());
    assert_eq!(revoked["revoked"]["owner"]["pod"], "web-a");
    eventually(Duration::from_secs(10), "the revoked user refused", || {
        (!s.pg.can_login(&user, &pass)).then_some(())
    });
    let (new_user, new_pass) = eventually(Duration::from_secs(15), "a new credential", || {
        let (u, p) = creds(&a);
        (u != user).then_some((u, p))
    });
    assert!(
        s.pg.can_login(&new_user, &new_pass),
        "the new credential works"
    );
    let listed = leases_as(&ctl, "ops/admin", &[]);
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0]["leaseId"], lease.as_str());
    assert_eq!(listed[0]["version"], 2);
    assert_eq!(s.lease_ids(), [listed[0]["leaseId"].as_str().unwrap()]);
    // Revoked once: a second revocation finds nothing.
    assert_eq!(ctl.run(&["revoke", &lease], b"").0, 3);
    assert_not_logged(
        &[&pass, &new_pass],
        &[
            ("broker", broker.process.output()),
            ("sidecar", a.process.output()),
        ],
    );
}
