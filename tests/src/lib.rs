//! The end-to-end harness: starts the real `coffer-broker` and
//! `coffer-sidecar` binaries as processes on loopback ports, mints tokens
//! shaped like the kubelet's from real RSA and EC keys, and captures every
//! process's output so tests can search it for leaked secrets.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; the
//! README's test command does it).

pub mod browser;
pub mod console;
pub mod openbao;
pub mod operator;
pub mod postgres;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod deploy;
pub mod https;
pub mod kube;

use coffer::{Client, TokenSource};
use coffer_broker::auth::jwt::ProjectedClaims;
use jsonwebtoken::{Algorithm, EncodingKey};

/// The issuer every test token names.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The broker's audience.
pub const AUDIENCE: &str = "coffer";

/// A test fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// A workspace binary, built beside the test executable.
pub fn binary(name: &str) -> PathBuf {
    // target/debug/deps/<test> -> target/debug/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test does)",
        path.display()
    );
    path
}

/// A signing key of the test issuer, or a foreign one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// RS256 with the issuer's RSA key (kid `rsa-a`).
    Rsa,
    /// ES256 with the issuer's EC key (kid `ec-a`).
    Ec,
    /// RS256 with a key the broker does not trust, claiming kid `rsa-a`.
    ForeignRsa,
    /// ES256 with a key the broker does not trust, claiming kid `ec-a`.
    ForeignEc,
}

/// Mints a projected-shape token for `namespace/service_account`.
pub fn mint(key: Key, namespace: &str, service_account: &str) -> String {
    mint_claims(
        key,
        &ProjectedClaims::projected(
            ISSUER,
            AUDIENCE,
            namespace,
            service_account,
            Some(&format!("{service_account}-0")),
            Duration::from_secs(3600),
        ),
    )
}

/// Signs arbitrary claims with `key`.
pub fn mint_claims(key: Key, claims: &ProjectedClaims) -> String {
    let (file, kid, alg) = match key {
        Key::Rsa => ("rsa-a.pem", "rsa-a", Algorithm::RS256),
        Key::Ec => ("ec-a.pem", "ec-a", Algorithm::ES256),
        Key::ForeignRsa => ("rsa-b.pem", "rsa-a", Algorithm::RS256),
        Key::ForeignEc => ("ec-b.pem", "ec-a", Algorithm::ES256),
    };
    let pem = std::fs::read(fixture(file)).unwrap();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    claims.sign(alg, kid, &encoding).unwrap()
}

/// A child process whose stdout and stderr go to files; killed on drop.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output going to `log`.
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .env("RUST_LOG", "debug,h2=info,hyper=info,tower=info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// The process id (for `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Asks the process to stop (SIGTERM), as Kubernetes does.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the process with SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker process with its own JWKS and policy.
pub struct BrokerProcess {
    pub process: Process,
    pub endpoint: String,
    policy_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The default test policy: `shop/web` reads `shop/*`; `ops/admin` manages `shop/*`.
pub const POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, rollback, list, status]
"#;

impl BrokerProcess {
    /// Starts a broker with the test issuer's JWKS and `policy`.
    pub fn start(policy: &str) -> Self {
        Self::start_with(policy, &[])
    }

    /// Starts a broker with extra `serve` arguments (e.g. `--audit-file`).
    pub fn start_with(policy: &str, args: &[&str]) -> Self {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Self::launch(policy, "127.0.0.1:0", &args)
    }

    /// Starts a broker on `listen` with `policy`, the test issuer's JWKS and
    /// extra `serve` arguments.
    pub fn launch(policy: &str, listen: &str, args: &[&std::ffi::OsStr]) -> Self {
        let auth = default_auth_args();
        let all: Vec<&std::ffi::OsStr> = auth
            .iter()
            .map(std::ffi::OsString::as_os_str)
            .chain(args.iter().copied())
            .collect();
        Self::launch_without_auth(policy, listen, &all)
    }

    /// Starts a broker on `listen` with `policy` and `args`, which must
    /// configure authentication themselves.
    pub fn launch_without_auth(policy: &str, listen: &str, args: &[&std::ffi::OsStr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, policy).unwrap();
        let addr_file = dir.path().join("addr");
        let mut command = Command::new(binary("coffer-broker"));
        command
            .arg("serve")
            .arg(format!("--listen={listen}"))
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--policy")
            .arg(&policy_file)
            .args(args);
        let process = Process::spawn(command, dir.path().join("broker.log"));
        let until = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                break addr;
            }
            assert!(
                Instant::now() < until,
                "broker did not start:\n{}",
                process.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            process,
            endpoint: format!("http://{addr}"),
            policy_file,
            _dir: dir,
        }
    }

    /// Replaces the policy file atomically, as a ConfigMap update would.
    pub fn write_policy(&self, policy: &str) {
        let tmp = self.policy_file.with_extension("tmp");
        std::fs::write(&tmp, policy).unwrap();
        std::fs::rename(&tmp, &self.policy_file).unwrap();
    }

    /// Waits until the broker's log holds `needle` `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        eventually(Duration::from_secs(20), needle, || {
            (self.process.output().matches(needle).count() >= count).then_some(())
        });
    }

    /// The overall status the broker reports on `grpc.health.v1`.
    pub async fn health(&self) -> tonic_health::pb::health_check_response::ServingStatus {
        let channel = tonic::transport::Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    /// A client presenting `token`.
    pub async fn client(&self, token: String) -> Client {
        Client::builder(self.endpoint.clone())
            .token(TokenSource::from_static(token))
            .connect()
            .await
            .unwrap()
    }
}

/// An `--auth-config` trusting the test issuer's keys from the JWKS file
/// `jwks`, checked for changes every `check_seconds`.
pub fn jwks_file_auth(jwks: &Path, check_seconds: u64) -> String {
    format!(
        "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwksFile: {{path: {}, checkIntervalSeconds: {check_seconds}}}\n",
        jwks.display()
    )
}

/// The flags `BrokerProcess::start` authenticates with: the test issuer's
/// JWKS, issuer and audience.
pub fn default_auth_args() -> Vec<std::ffi::OsString> {
    vec![
        "--jwks".into(),
        fixture("jwks-a.json").into(),
        "--issuer".into(),
        ISSUER.into(),
        "--audience".into(),
        AUDIENCE.into(),
    ]
}

impl BrokerProcess {
    /// Starts a broker with `policy` and the caller's `args` in place of the
    /// default authentication flags (e.g. `--auth-config FILE`, or
    /// [`default_auth_args`] plus `--metrics-listen 127.0.0.1:0`).
    pub fn start_with_args(
        policy: &str,
        args: impl IntoIterator<Item = impl AsRef<std::ffi::OsStr>>,
    ) -> Self {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsString::as_os_str).collect();
        Self::launch_without_auth(policy, "127.0.0.1:0", &args)
    }

    /// Starts a broker with `policy` and an `--auth-config` file holding
    /// `yaml` (see [`jwks_file_auth`] for the common one).
    pub fn start_with_auth_config(policy: &str, yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("auth.yaml");
        std::fs::write(&config, yaml).unwrap();
        // The file is read once at start: it may go once the broker listens.
        Self::start_with_args(policy, ["--auth-config".as_ref(), config.as_os_str()])
    }

    /// The address the broker's `--metrics-listen` endpoint bound, from its log.
    pub fn metrics_addr(&self) -> String {
        eventually(Duration::from_secs(10), "the metrics endpoint", || {
            let output = strip_ansi(&self.process.output());
            let line = output.lines().find(|l| l.contains("metrics listening"))?;
            let addr = line.split("addr=").nth(1)?;
            Some(
                addr.split_whitespace()
                    .next()?
                    .trim_matches('"')
                    .to_string(),
            )
        })
    }

    /// The broker's `/metrics` page.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.metrics_addr()).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).unwrap();
        page
    }

    /// The reasons of the authentication failures the broker logged so far.
    pub fn auth_failure_reasons(&self) -> Vec<String> {
        strip_ansi(&self.process.output())
            .lines()
            .filter(|l| l.contains("authentication failed"))
            .filter_map(|l| {
                let rest = l.split("reason=").nth(1)?;
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_matches('"')
                        .to_string(),
                )
            })
            .collect()
    }
}

/// A sidecar process writing into a fresh directory under /dev/shm.
pub struct SidecarProcess {
    pub process: Process,
    pub out_dir: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    /// Starts a sidecar for `token` with `secrets_yaml` (the `secrets:` list
    /// items) and extra CLI `args` such as `--once`.
    pub fn start(broker: &BrokerProcess, token: &str, secrets_yaml: &str, args: &[&str]) -> Self {
        Self::start_with(
            &broker.endpoint,
            token,
            secrets_yaml,
            SidecarOptions {
                out_parent: None,
                global_yaml: "",
                args,
            },
        )
    }

    /// A file in the output directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.out_dir.path().join(name)
    }

    /// The token file the sidecar reads (replace it to refresh the token).
    pub fn token_file(&self) -> PathBuf {
        self._dir.path().join("token")
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free now (bound, then released) for a server that must
/// be told its port before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `cofferctl` with `args`; returns its exit code and stdout.
pub fn cofferctl(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let output = Command::new(binary("cofferctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

// ---- Sidecar helpers (issue 6) ----

/// What [`SidecarProcess::start_with`] can change beyond [`SidecarProcess::start`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SidecarOptions<'a> {
    /// Where the output directory is made (default `/dev/shm`).
    pub out_parent: Option<&'a Path>,
    /// Extra top-level YAML lines (e.g. `adminListen: 127.0.0.1:0\n`).
    pub global_yaml: &'a str,
    /// Extra command-line arguments.
    pub args: &'a [&'a str],
}

impl SidecarProcess {
    /// Starts a sidecar against `endpoint` with more control than [`Self::start`].
    pub fn start_with(
        endpoint: &str,
        token: &str,
        secrets_yaml: &str,
        options: SidecarOptions<'_>,
    ) -> Self {
        Self::start_wrapped(&[], endpoint, token, secrets_yaml, options)
    }

    /// Like [`Self::start_with`], run through `wrapper` (a program and its
    /// arguments, e.g. `setpriv` dropping capabilities) when it is not empty.
    pub fn start_wrapped(
        wrapper: &[&str],
        endpoint: &str,
        token: &str,
        secrets_yaml: &str,
        options: SidecarOptions<'_>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = tempfile::Builder::new()
            .prefix("coffer-e2e-")
            .tempdir_in(options.out_parent.unwrap_or(Path::new("/dev/shm")))
            .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(
            &config,
            format!(
                "broker: {endpoint}\ntokenFile: {}\noutputDir: {}\n{}secrets:\n{secrets_yaml}",
                token_file.display(),
                out_dir.path().display(),
                options.global_yaml,
            ),
        )
        .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("coffer-sidecar"));
                command
            }
            None => Command::new(binary("coffer-sidecar")),
        };
        command.arg("--config").arg(&config).args(options.args);
        let process = Process::spawn(command, dir.path().join("sidecar.log"));
        Self {
            process,
            out_dir,
            _dir: dir,
        }
    }

    /// Waits until the sidecar's output contains `needle`; returns the output.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        eventually(timeout, &format!("sidecar log {needle:?}"), || {
            let output = self.process.output();
            output.contains(needle).then_some(output)
        })
    }

    /// The address the admin endpoint bound (configure `adminListen: 127.0.0.1:0`).
    pub fn admin_addr(&self) -> String {
        self.listening_addr("admin endpoint listening")
    }

    /// The address the quit endpoint bound (configure `quitListen: 127.0.0.1:0`).
    pub fn quit_addr(&self) -> String {
        self.listening_addr("quit endpoint listening")
    }

    fn listening_addr(&self, message: &str) -> String {
        let output = strip_ansi(&self.wait_for_log(message, Duration::from_secs(20)));
        let line = output.lines().find(|l| l.contains(message)).unwrap();
        let start = line.find("addr=").unwrap() + "addr=".len();
        line[start..].split_whitespace().next().unwrap().to_string()
    }

    /// Waits until every file in `names` exists; panics with the sidecar's
    /// output otherwise.
    pub fn wait_for_files(&self, names: &[&str], timeout: Duration) {
        let until = Instant::now() + timeout;
        while !names.iter().all(|n| self.file(n).exists()) {
            assert!(
                Instant::now() < until,
                "files {names:?} did not appear; sidecar output:\n{}",
                self.process.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory `..data` points at now, if any.
    pub fn data_target(&self) -> Option<PathBuf> {
        std::fs::read_link(self.out_dir.path().join("..data")).ok()
    }
}

impl BrokerProcess {
    /// Starts a broker listening on `listen` (e.g. `127.0.0.1:0`, or the
    /// address of a broker that was killed) with a dev store persisted in
    /// `store_dir`, so that its secrets survive a restart.
    pub fn start_persistent(policy: &str, listen: &str, store_dir: &Path) -> Self {
        let key_file = store_dir.join("store.key");
        if !key_file.exists() {
            std::fs::write(&key_file, [7u8; 32]).unwrap();
        }
        let store_file = store_dir.join("store.sealed");
        Self::launch(
            policy,
            listen,
            &[
                "--dev-store-file".as_ref(),
                store_file.as_os_str(),
                "--dev-store-key-file".as_ref(),
                key_file.as_os_str(),
            ],
        )
    }

    /// Writes `data` at `path` as the test operator (`ops/admin`); returns the version.
    pub async fn put_data(&self, path: &str, data: coffer::SecretData) -> u64 {
        self.put_as(mint(Key::Rsa, "ops", "admin"), path, data)
            .await
    }

    /// Writes `data` at `path` as `token`'s holder; returns the version.
    pub async fn put_as(&self, token: String, path: &str, data: coffer::SecretData) -> u64 {
        self.client(token)
            .await
            .put(coffer::Put::new(path, data).content_type("text/plain"))
            .await
            .unwrap_or_else(|e| panic!("put {path}: {e}\n{}", self.process.output()))
    }

    /// Writes `value` at `path` as the test operator; returns the version.
    pub async fn put_bytes(&self, path: &str, value: &[u8]) -> u64 {
        self.put_data(path, coffer::SecretData::Bytes(value.into()))
            .await
    }

    /// Writes a map of string keys at `path`; returns the version.
    pub async fn put_map(&self, path: &str, items: &[(&str, &str)]) -> u64 {
        let map = items
            .iter()
            .map(|(k, v)| (k.to_string(), coffer::SecretBytes::from(v.as_bytes())))
            .collect();
        self.put_data(path, coffer::SecretData::Map(map)).await
    }

    /// The versions workloads acknowledged for `path`.
    pub async fn acked_versions(&self, path: &str) -> Vec<u64> {
        let admin = self.client(mint(Key::Rsa, "ops", "admin")).await;
        let status = admin.status(path).await.unwrap();
        status.workloads.iter().map(|w| w.version).collect()
    }
}

/// A shell process that writes its pid to a file and counts the SIGHUPs it
/// receives, one line per signal, in another file.
pub struct HupCounter {
    pub process: Process,
    pub pid_file: PathBuf,
    count_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl HupCounter {
    /// Starts the counter and waits for its pid file.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let count_file = dir.path().join("hups");
        // `sleep & wait` lets the trap run as soon as a signal arrives.
        let script = format!(
            "trap 'echo hup >> {count}' HUP; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; \
             while true; do sleep 1 & wait $!; done",
            count = count_file.display(),
            pid = pid_file.display(),
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        let process = Process::spawn(command, dir.path().join("counter.log"));
        eventually(Duration::from_secs(10), "the pid file", || {
            pid_file.exists().then_some(())
        });
        Self {
            process,
            pid_file,
            count_file,
            _dir: dir,
        }
    }

    /// How many SIGHUPs arrived so far.
    pub fn count(&self) -> usize {
        std::fs::read_to_string(&self.count_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// `text` without terminal colour codes (the logs are coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One HTTP/1.0 request to `addr`; returns the status code and body.
pub fn http(addr: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    parse_response(&response)
}

/// An HTTP/1 response's status and body.
pub fn parse_response(response: &str) -> Option<(u16, String)> {
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
