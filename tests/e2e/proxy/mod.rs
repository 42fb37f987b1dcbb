//! The sidecar as a credential-holding proxy (docs/proxy.md): real `psql`
//! and `pgbench` reach a real PostgreSQL (SCRAM-SHA-256) through it with no
//! password in their environment, on credentials from real OpenBao.

mod http_bearer;
mod postgres_cancel;
mod postgres_refused_login;
mod postgres_rotation;
mod postgres_static;
mod postgres_tls;
mod postgres_unix_socket;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use coffer_tests::{
    BrokerProcess, SidecarOptions, SidecarProcess, free_port,
    openbao::{OpenBao, ROOT_TOKEN},
    pod_token,
    postgres::{Postgres, pg_bin_dir},
};

/// PostgreSQL and OpenBao, and the broker's Vault config mapping `shop/*`
/// to KV and `shop/pg` to the database role `shop`.
struct Setup {
    pg: Postgres,
    bao: OpenBao,
    config: PathBuf,
}

fn setup(default_ttl: &str, max_ttl: &str, grace: &str) -> Setup {
    let pg = Postgres::start();
    let bao = OpenBao::start();
    pg.configure_openbao(&bao, "shop", default_ttl, max_ttl);
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: shop/pg, mount: database, type: database, role: shop, grace: {grace}}}\n",
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
}

/// A sidecar with one postgres proxy of `path` to `pg`, over TLS checked
/// against the cluster's CA (as in production); returns it and the proxy's
/// port once the proxy is ready (its first credential arrived).
fn start_proxy(broker: &BrokerProcess, pg: &Postgres, path: &str) -> (SidecarProcess, u16) {
    let port = free_port();
    let sidecar = start_proxies(
        broker,
        &format!(
            "  - {{name: shop-db, protocol: postgres, listen: 127.0.0.1:{port}, upstream: 127.0.0.1:{}, path: {path}, tls: {{caFile: {}, serverName: localhost}}}}\n",
            pg.port,
            pg.ca_file().display()
        ),
    );
    (sidecar, port)
}

/// A sidecar with the `proxies:` entries `entries_yaml` (and no secrets),
/// once ready.
fn start_proxies(broker: &BrokerProcess, entries_yaml: &str) -> SidecarProcess {
    let global = format!("adminListen: 127.0.0.1:0\nproxies:\n{entries_yaml}");
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &pod_token("web-a"),
        "  []\n",
        SidecarOptions {
            global_yaml: &global,
            ..Default::default()
        },
    );
    sidecar.wait_for_log("every secret is written; ready", Duration::from_secs(30));
    sidecar
}

/// Puts a static credential (`username`, `password`) at `secret/<path>`.
fn put_credential(bao: &OpenBao, path: &str, user: &str, password: &str) {
    bao.bao(&[
        "kv",
        "put",
        &format!("secret/{path}"),
        &format!("username={user}"),
        &format!("password={password}"),
    ]);
}

/// Fails when `needle` appears in any of the `(name, text)` outputs.
fn assert_nowhere(needle: &str, outputs: &[(&str, &str)]) {
    for (name, text) in outputs {
        assert!(
            !text.contains(needle),
            "the credential appears in the {name}"
        );
    }
}

/// Runs a PostgreSQL client program (`psql`, `pgbench`) from the server's
/// own bin directory, with no password anywhere in its environment.
fn pg_command(program: &str) -> Command {
    let mut command = Command::new(pg_bin_dir().join(program));
    for var in ["PGPASSWORD", "PGPASSFILE", "PGSERVICEFILE"] {
        command.env_remove(var);
    }
    // A passfile lookup would find nothing anyway; make sure of it.
    command
        .env("PGPASSFILE", "/dev/null")
        .env("PGCONNECT_TIMEOUT", "10");
    command.stdin(Stdio::null());
    command
}

/// `sql` through the proxy on `port` with `psql`, as whatever user the
/// app names (the proxy ignores it); stdout, or stderr on failure.
fn psql_via(port: u16, sql: &str) -> Result<String, String> {
    let out = pg_command("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "app", "-d", "postgres", "-w", "-tAc", sql])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
