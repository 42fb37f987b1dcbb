//! A static KV credential: `psql` with no password logs in through the
//! proxy as the secret's user, over TLS upstream, and the password shows up
//! nowhere.

use super::{psql_via, setup, start_proxy};
use coffer_tests::{get_page, postgres::ROOT_PASSWORD};

const CANARY: &str = "canary-pw-7f3a9c1e5b";

#[test]
fn psql_without_a_password_logs_in_as_the_secrets_user_and_the_password_is_nowhere() {
    let s = setup("30s", "120s", "5s");
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        &format!("CREATE ROLE app_static LOGIN PASSWORD '{CANARY}'"),
    )
    .unwrap();
    s.bao.bao(&[
        "kv",
        "put",
        "secret/shop/pgstatic",
        "username=app_static",
        &format!("password={CANARY}"),
    ]);
    let broker = s.broker();
    let (sidecar, port) = start_proxy(&broker, &s.pg, "shop/pgstatic");

    // The proxy's leg to the server is TLS (the app's, on loopback, is not).
    let user = psql_via(
        port,
        "select current_user || ' tls ' || ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .unwrap();
    assert_eq!(user, "app_static tls true");
    // The server used SCRAM (the cluster's host auth), not trust.
    let method =
        s.pg.psql(
            "postgres",
            ROOT_PASSWORD,
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'app_static'",
        )
        .unwrap();
    assert_eq!(method.trim(), "t");

    let metrics = get_page(&sidecar.admin_addr(), "/metrics");
    assert!(
        metrics.contains("coffer_sidecar_proxy_connections_total{proxy=\"shop-db\"} 1"),
        "{metrics}"
    );
    let mut files = Vec::new();
    for entry in walk(sidecar.out_dir.path()) {
        files.push(std::fs::read(&entry).unwrap_or_default());
    }
    for (name, text) in [
        ("sidecar log", sidecar.process.output()),
        ("broker log", broker.process.output()),
        ("metrics", metrics),
    ] {
        assert!(!text.contains(CANARY), "the password appears in the {name}");
    }
    for bytes in files {
        assert!(
            !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "the password appears in a file of the output directory"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}
