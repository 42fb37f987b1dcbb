//! `pgbench -c 8` through the proxy while OpenBao's database engine rotates
//! the credential (before `max_ttl`) three times: no failed transaction,
//! each new connection after a rotation logs in as the new user. TPS
//! through the proxy and direct are printed from the same run; nothing is
//! asserted about them; both reach the server over TLS (the proxy with the
//! cluster's CA, direct pgbench by libpq's default `sslmode=prefer`).
//! `COFFER_PROXY_BENCH_SECS` sets the length (20 s in CI; 30 s is the full
//! form).

use std::{collections::BTreeSet, process::Output, time::Duration};

use coffer_tests::postgres::ROOT_PASSWORD;

use super::{pg_command, psql_via, setup, start_proxy};

fn bench_secs() -> u64 {
    std::env::var("COFFER_PROXY_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn pgbench(port: u16, user: &str, password: Option<&str>, secs: u64) -> std::process::Child {
    let mut command = pg_command("pgbench");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(["-c", "8", "-j", "2", "-T", &secs.to_string(), "postgres"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command.spawn().unwrap()
}

/// (tps, failed transactions) from pgbench's report.
fn report(out: &Output) -> (f64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in:\n{text}"));
    let failed = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (tps, failed)
}

#[test]
fn pgbench_through_the_proxy_survives_three_rotations_and_new_connections_use_the_new_user() {
    let _heavy = coffer_tests::serial::heavy();
    let secs = bench_secs();
    // Rotated before max_ttl (a few seconds apart); the old users are
    // revoked only after the run (grace), so open sessions stay.
    let s = setup("3s", "6s", "300s");
    let root = |sql: &str| s.pg.psql("postgres", ROOT_PASSWORD, sql).unwrap();
    let init = pg_command("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &s.pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-i", "-s", "1", "-q", "postgres"])
        .env("PGPASSWORD", ROOT_PASSWORD)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    root("GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC");

    // Direct, as the reference of the same run.
    let direct = pgbench(s.pg.port, "postgres", Some(ROOT_PASSWORD), secs)
        .wait_with_output()
        .unwrap();
    let (direct_tps, _) = report(&direct);

    let broker = s.broker();
    let (sidecar, port) = start_proxy(&broker, &s.pg, "shop/pg");
    let bench = pgbench(port, "app", None, secs);
    let mut users = BTreeSet::new();
    let mut in_activity = String::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if in_activity.is_empty() && started.elapsed() > Duration::from_secs(secs / 2) {
            // Mid-run, after rotations: the open pgbench sessions.
            in_activity = root(
                "select count(*) || ' as ' || coalesce(string_agg(distinct usename, ','), 'a dropped role') from pg_stat_activity where application_name = 'pgbench'",
            )
            .trim()
            .to_string();
        }
        // A new connection logs in as whoever the current credential names.
        if let Ok(user) = psql_via(port, "select current_user") {
            users.insert(user);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let proxied = bench.wait_with_output().unwrap();
    let (proxy_tps, failed) = report(&proxied);
    let rotations = sidecar
        .process
        .output()
        .matches("proxy credential updated")
        .count();
    println!(
        "pgbench -c 8 -T {secs}: through the proxy {proxy_tps:.0} tps, direct {direct_tps:.0} tps (ratio {:.2}); {rotations} credentials; users seen by new connections: {users:?}; pgbench sessions as: {}",
        proxy_tps / direct_tps,
        in_activity
    );
    assert_eq!(failed, 0, "failed transactions through the proxy");
    assert!(
        users.len() >= 4,
        "new connections saw {users:?}, not 4 users (the first and 3 rotations); sidecar log:\n{}",
        sidecar.process.output()
    );
    assert!(users.iter().all(|u| u.starts_with("v-")), "{users:?}");
    // The open pgbench sessions stayed open across rotations, as their
    // first user; OpenBao drops that role when its lease expires
    // (pg_stat_activity then shows no name), which ends no session.
    assert!(
        in_activity == "8 as a dropped role"
            || (in_activity.starts_with("8 as v-") && !in_activity.contains(',')),
        "pgbench sessions mid-run: {in_activity:?}"
    );
}
