//! `pgbench -c 8` through the proxy while OpenBao's database engine rotates
//! the credential (before `max_ttl`) three times: no failed transaction,
//! each new connection after a rotation logs in as the new user. Then the
//! speed apart from the rotations: TPS direct, through the proxy and
//! through a bare TCP relay, in turns, printed from the same run; nothing
//! is asserted about them; all reach the server over TLS (the proxy with
//! the cluster's CA, direct and relayed pgbench by libpq's default
//! `sslmode=prefer`, end to end). `COFFER_PROXY_BENCH_SECS` sets the
//! rotation run's length (20 s in CI; 30 s is the full form), each speed
//! turn a quarter of it.

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

    // The speed, measured apart from the rotations (above, the machine also
    // ran OpenBao's role changes and a psql every 500 ms): direct, through
    // the proxy, and through a bare TCP relay (the floor any proxy pays on
    // this machine: one more process and two more loopback hops), in turns.
    let relay = bare_relay(s.pg.port);
    let turn = (secs / 4).max(3);
    let (mut direct, mut proxied, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let run = |port, user, password| {
            report(
                &pgbench(port, user, password, turn)
                    .wait_with_output()
                    .unwrap(),
            )
            .0
        };
        direct.push(run(s.pg.port, "postgres", Some(ROOT_PASSWORD)));
        proxied.push(run(port, "app", None));
        relayed.push(run(relay, "postgres", Some(ROOT_PASSWORD)));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (direct, proxied, relayed) = (best(&direct), best(&proxied), best(&relayed));
    println!(
        "pgbench -c 8, two turns of {turn} s each, best: direct {direct:.0} tps, through the proxy {proxied:.0} tps ({:.2}x direct, {:.2}x the bare relay), through a bare TCP relay {relayed:.0} tps ({:.2}x direct)",
        proxied / direct,
        proxied / relayed,
        relayed / direct,
    );
    assert!(proxied > 0.0, "no transaction through the proxy");
}

/// A plain TCP relay to `port` (a thread per direction, no parsing): the
/// reference a proxy's speed is read against. Returns its port; it runs
/// until the test ends.
fn bare_relay(port: u16) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for app in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            let _ = (app.set_nodelay(true), upstream.set_nodelay(true));
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(app.try_clone().unwrap(), upstream.try_clone().unwrap());
            pipe(upstream, app);
        }
    });
    relay
}
