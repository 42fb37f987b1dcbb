//! A real PostgreSQL cluster for the dynamic-secret tests: `initdb` in a
//! temp directory, `postgres` on a free loopback port, password (SCRAM)
//! authentication over TCP, TLS offered with a certificate for `127.0.0.1`
//! and `localhost` from the cluster's own CA ([`Postgres::ca_file`]; a
//! client that does not ask gets plain TCP), stopped on drop. PostgreSQL refuses to run as
//! root, so when the tests run as root the server runs as the `postgres`
//! user the Debian package creates, in a directory it owns.
//!
//! `scripts/install-test-deps` installs the `postgresql` package when it is
//! missing. The tests never skip without it: they fail with instructions.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::{http::free_port, openbao::OpenBao, process::Process};

/// The superuser's password (the cluster lives only as long as the test).
pub const ROOT_PASSWORD: &str = "coffer-test-pg-root";

/// The directory holding `initdb` and `postgres`: `$COFFER_PG_BIN`, the
/// newest `/usr/lib/postgresql/*/bin`, or the directory of `initdb` on PATH.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COFFER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versioned.sort();
    if let Some((_, bin)) = versioned.pop() {
        return bin;
    }
    if let Some(dir) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    {
        return dir;
    }
    panic!(
        "PostgreSQL is not installed. Run `scripts/install-test-deps` \
         (it does `apt-get install -y postgresql`), or set COFFER_PG_BIN"
    );
}

/// A running PostgreSQL server.
pub struct Postgres {
    /// `127.0.0.1`'s port it listens on.
    pub port: u16,
    process: Process,
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The uid/gid the server runs as, when the tests run as root.
    owner: Option<(u32, u32)>,
}

impl Postgres {
    /// Creates a cluster and starts it; waits until it accepts connections.
    pub fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let owner = run_as_owner();
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, ROOT_PASSWORD).unwrap();
        let (cert, key) = write_server_certificate(dir.path());
        if let Some((uid, gid)) = owner {
            for path in [dir.path(), pwfile.as_path(), cert.as_path(), key.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last_output = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut command = Command::new(bin.join("postgres"));
            command
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()))
                .arg("-k")
                .arg(dir.path());
            as_owner(&mut command, owner);
            let mut process = Process::spawn(command, dir.path().join("postgres.log"));
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return Self {
                        port,
                        process,
                        bin,
                        dir,
                        owner,
                    };
                }
                if process.wait(Duration::from_millis(100)).is_some() || Instant::now() > until {
                    last_output = process.output();
                    process.kill();
                    break;
                }
            }
        }
        panic!("PostgreSQL did not start:\n{last_output}");
    }

    /// Whether `user` can log in with `password` over TCP (a real client
    /// connection with `psql`).
    pub fn can_login(&self, user: &str, password: &str) -> bool {
        self.psql(user, password, "select 1").is_ok()
    }

    /// Runs `sql` as `user` with `psql`; its output, or its error text.
    pub fn psql(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let psql = self.bin.join("psql");
        let psql = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let out = Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", "postgres", "-tAc", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The server's log so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Enables OpenBao's database engine at `database/` against this
    /// server: connection `pg`, and role `role` creating a login role that
    /// is valid until the lease's expiry, with the given TTLs (e.g. "6s").
    pub fn configure_openbao(&self, bao: &OpenBao, role: &str, default_ttl: &str, max_ttl: &str) {
        bao.bao(&["secrets", "enable", "database"]);
        bao.bao(&[
            "write",
            "database/config/pg",
            "plugin_name=postgresql-database-plugin",
            &format!(
                "connection_url=postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable",
                self.port
            ),
            "username=postgres",
            &format!("password={ROOT_PASSWORD}"),
            &format!("allowed_roles={role}"),
            "verify_connection=true",
        ]);
        bao.bao(&[
            "write",
            &format!("database/roles/{role}"),
            "db_name=pg",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
            &format!("default_ttl={default_ttl}"),
            &format!("max_ttl={max_ttl}"),
        ]);
    }

    /// The CA (PEM) that signs the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown; SIGKILL (the process' own drop) if it hangs.
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut stop, self.owner);
        let _ = stop.status();
    }
}

/// Writes `ca.pem` and the server's `server.crt` and `server.key` (0600,
/// as PostgreSQL demands) into `dir`; returns the last two.
fn write_server_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "coffer test PostgreSQL CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (cert_file, key_file)
}

/// The `postgres` user's uid and gid when running as root (PostgreSQL
/// refuses root), `None` otherwise: the user a test can also run a client
/// as, when it needs a uid other than its own.
pub fn run_as_owner() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "running as root needs the `postgres` user (the Debian package creates it)"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}
