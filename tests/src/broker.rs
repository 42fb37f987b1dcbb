//! The broker as the tests run it: the real `coffer-broker` binary on a
//! loopback port with a policy file the test can replace, started through
//! one builder, and the calls a test makes on it (writes as the operator,
//! its health, its metrics page, the reasons it logged).

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use coffer::{Client, TokenSource};

use crate::{
    http::get_page,
    policy::POLICY,
    process::{Process, binary, eventually, fixture, strip_ansi},
    tokens::{AUDIENCE, ISSUER, Key, mint},
};

/// A broker process with its own JWKS and policy.
pub struct BrokerProcess {
    pub process: Process,
    pub endpoint: String,
    policy_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// How a broker authenticates callers.
#[derive(Debug, Clone)]
enum Auth {
    /// The test issuer's JWKS ([`default_auth_args`]).
    TestIssuer,
    /// An `--auth-config` file holding this YAML.
    Config(String),
    /// The caller's own flags.
    Args(Vec<OsString>),
}

/// What a test may change about a broker before it starts; see
/// [`BrokerProcess::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start`"]
pub struct BrokerBuilder {
    policy: String,
    listen: String,
    auth: Auth,
    args: Vec<OsString>,
    store_dir: Option<PathBuf>,
}

impl BrokerBuilder {
    /// The policy (default [`POLICY`]).
    pub fn policy(mut self, policy: &str) -> Self {
        self.policy = policy.to_string();
        self
    }

    /// The `--listen` address (default `127.0.0.1:0`; the address of a
    /// broker that was killed, to come back where it was).
    pub fn listen(mut self, listen: &str) -> Self {
        self.listen = listen.to_string();
        self
    }

    /// Extra `serve` arguments (e.g. `--audit-file FILE`), after the others.
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An audit trail written to `file` (`--audit-file`).
    pub fn audit_file(self, file: &Path) -> Self {
        self.args([OsStr::new("--audit-file"), file.as_os_str()])
    }

    /// An `--auth-config` file holding `yaml` in place of the test issuer's
    /// JWKS (see [`jwks_file_auth`] for the common one).
    pub fn auth_config(mut self, yaml: &str) -> Self {
        self.auth = Auth::Config(yaml.to_string());
        self
    }

    /// Authentication flags of the caller's own (e.g. `--auth-config FILE`)
    /// in place of the test issuer's JWKS.
    pub fn auth_args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Self {
        self.auth = Auth::Args(args.into_iter().map(|a| a.as_ref().to_owned()).collect());
        self
    }

    /// A dev store sealed into `dir` (with a fixed key made there if
    /// missing), so that its secrets survive a restart.
    pub fn store_dir(mut self, dir: &Path) -> Self {
        self.store_dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the broker and waits until it listens.
    pub fn start(self) -> BrokerProcess {
        let dir = tempfile::tempdir().unwrap();
        let policy_file = dir.path().join("policy.yaml");
        std::fs::write(&policy_file, &self.policy).unwrap();
        let addr_file = dir.path().join("addr");
        let mut command = Command::new(binary("coffer-broker"));
        command
            .arg("serve")
            .arg(format!("--listen={}", self.listen))
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--policy")
            .arg(&policy_file);
        match &self.auth {
            Auth::TestIssuer => command.args(default_auth_args()),
            Auth::Config(yaml) => {
                let config = dir.path().join("auth.yaml");
                std::fs::write(&config, yaml).unwrap();
                command.arg("--auth-config").arg(config)
            }
            Auth::Args(args) => command.args(args),
        };
        if let Some(store) = &self.store_dir {
            let key_file = store.join("store.key");
            if !key_file.exists() {
                std::fs::write(&key_file, [7u8; 32]).unwrap();
            }
            command
                .arg("--dev-store-file")
                .arg(store.join("store.sealed"))
                .arg("--dev-store-key-file")
                .arg(key_file);
        }
        command.args(&self.args);
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
        BrokerProcess {
            process,
            endpoint: format!("http://{addr}"),
            policy_file,
            _dir: dir,
        }
    }
}

impl BrokerProcess {
    /// A broker with the test issuer's JWKS, [`POLICY`], on `127.0.0.1:0`,
    /// to be changed before [`BrokerBuilder::start`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            policy: POLICY.to_string(),
            listen: "127.0.0.1:0".to_string(),
            auth: Auth::TestIssuer,
            args: Vec::new(),
            store_dir: None,
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

    /// The status a read of `path` as `token`'s holder fails with, or
    /// `None` when it succeeds.
    pub async fn read_code(&self, token: String, path: &str) -> Option<coffer::Code> {
        self.client(token).await.get(path).await.err()?.code()
    }

    /// The address the broker's `--metrics-listen` endpoint bound, from its log.
    pub fn metrics_addr(&self) -> String {
        self.process
            .logged_addr("metrics listening", Duration::from_secs(10))
    }

    /// The broker's `/metrics` page.
    pub fn metrics(&self) -> String {
        get_page(&self.metrics_addr(), "/metrics")
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

    /// Writes `data` at `path` as the test operator (`ops/admin`); returns the version.
    pub async fn put_data(&self, path: &str, data: coffer::SecretData) -> u64 {
        self.put_as(mint(Key::Rsa, "ops", "admin"), path, data)
            .await
    }

    /// Writes `data` at `path` as `token`'s holder; returns the version.
    pub async fn put_as(&self, token: String, path: &str, data: coffer::SecretData) -> u64 {
        self.client(token)
            .await
            .put(coffer::operator::Put::new(path, data).content_type("text/plain"))
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

/// The records of the audit trail in `file`, one JSON value per line
/// (none while the file does not exist).
pub fn audit_records(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An `--auth-config` trusting the test issuer's keys from the JWKS file
/// `jwks`, checked for changes every `check_seconds`.
pub fn jwks_file_auth(jwks: &Path, check_seconds: u64) -> String {
    format!(
        "authenticators:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    jwksFile: {{path: {}, checkIntervalSeconds: {check_seconds}}}\n",
        jwks.display()
    )
}

/// The flags a broker authenticates with by default: the test issuer's
/// JWKS, issuer and audience.
pub fn default_auth_args() -> Vec<OsString> {
    vec![
        "--jwks".into(),
        fixture("jwks-a.json").into(),
        "--issuer".into(),
        ISSUER.into(),
        "--audience".into(),
        AUDIENCE.into(),
    ]
}
