//! A real three-node OpenBao HA cluster for the reliability tests: `bao
//! server` processes from .venv with integrated raft storage on loopback
//! ports, initialised with Shamir keys the struct holds (3 shares,
//! threshold 2), every node unsealed and a raft voter. KV v2 at `secret`,
//! the broker's policy and an AppRole login, as a real install has. Each
//! node writes its audit log to its own output, so the test counts the
//! Vault reads each node answered.
//!
//! The faults a test makes: [`kill`](RaftCluster::kill) (SIGKILL),
//! [`restart`](RaftCluster::restart) (same data, unsealed again),
//! [`pause`](RaftCluster::pause)/[`resume`](RaftCluster::resume)
//! (SIGSTOP/SIGCONT). A network fault between the broker and the cluster is
//! [`crate::fault::FaultProxy`]'s.
//!
//! Standby reads are OpenBao 2.7's default (standbys answer reads from
//! their own, possibly lagging, copy); [`ClusterOptions`] can turn them off.
//! Raft runs at `performance_multiplier = 1`, the timing the Vault docs
//! recommend for production (an election takes 1–3 s after the leader
//! dies, against 5–10 s at the default of 5).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{
    openbao::{bao_binary, reserve_port},
    process::{Process, eventually, within},
};

/// What the broker may do on the cluster: the KV v2 mount `secret`.
pub const BROKER_POLICY: &str = r#"
path "secret/data/*" { capabilities = ["create", "read", "update", "delete", "patch"] }
path "secret/metadata/*" { capabilities = ["read", "list", "delete", "update"] }
path "secret/delete/*" { capabilities = ["update"] }
path "secret/undelete/*" { capabilities = ["update"] }
path "secret/destroy/*" { capabilities = ["update"] }
"#;

/// How a cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (3 unless a test needs another size).
    pub nodes: usize,
    /// `disable_standby_reads = true`: standbys forward reads to the
    /// active node (OpenBao's default is false: they answer them).
    pub disable_standby_reads: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            disable_standby_reads: false,
        }
    }
}

/// One node: its ports, its process while it runs, and every log it wrote
/// (one per start, so the audit counts survive a restart).
struct Node {
    api_port: u16,
    config: PathBuf,
    process: Option<Process>,
    logs: Vec<PathBuf>,
}

/// A running raft cluster; every node is killed on drop.
pub struct RaftCluster {
    nodes: Vec<Node>,
    unseal_keys: Vec<SecretString>,
    root_token: SecretString,
    approle: (PathBuf, PathBuf),
    dir: tempfile::TempDir,
    /// How long [`start`](Self::start) took, from the first process to the
    /// third voter with everything set up.
    pub started_in: Duration,
}

impl RaftCluster {
    /// Three nodes, standby reads on (OpenBao's default).
    pub fn start() -> Self {
        Self::start_with(ClusterOptions::default())
    }

    /// A cluster made as `options` says. Retries with fresh ports when a
    /// node cannot bind (another test took a reserved port).
    pub fn start_with(options: ClusterOptions) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&options) {
                Ok(cluster) => return cluster,
                Err(output) => {
                    eprintln!("the OpenBao raft cluster did not start; again:\n{output}");
                    last = output;
                }
            }
        }
        panic!("the OpenBao raft cluster did not start:\n{last}");
    }

    fn try_start(options: &ClusterOptions) -> Result<Self, String> {
        let begin = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        // Each node takes a port and its successor (the cluster listener).
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < options.nodes {
            let port = reserve_port();
            if ports.iter().all(|&p| port.abs_diff(p) > 1) {
                ports.push(port);
            }
        }
        let mut nodes = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let config = dir.path().join(format!("node{i}.hcl"));
            std::fs::write(&config, node_config(&dir, i, &ports, options)).unwrap();
            std::fs::create_dir(dir.path().join(format!("data{i}"))).unwrap();
            nodes.push(Node {
                api_port: port,
                config,
                process: None,
                logs: Vec::new(),
            });
        }
        let mut cluster = Self {
            nodes,
            unseal_keys: Vec::new(),
            root_token: SecretString::from(String::new()),
            approle: (PathBuf::new(), PathBuf::new()),
            dir,
            started_in: Duration::ZERO,
        };
        for i in 0..options.nodes {
            cluster.spawn(i);
        }
        // Node 0 listening (any answer: 501 while uninitialised).
        let until = Instant::now() + Duration::from_secs(30);
        while node_health(cluster.nodes[0].api_port).is_none() {
            if Instant::now() > until || cluster.any_exited() {
                return Err(cluster.log_tails());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let init = cluster.cli_at(
            0,
            &[
                "operator",
                "init",
                "-key-shares=3",
                "-key-threshold=2",
                "-format=json",
            ],
        );
        let init: Value = serde_json::from_str(&init).map_err(|e| format!("init: {e}"))?;
        cluster.unseal_keys = init["unseal_keys_b64"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| SecretString::from(k.as_str().unwrap().to_string()))
            .collect();
        cluster.root_token = SecretString::from(init["root_token"].as_str().unwrap().to_string());
        cluster.try_unseal(0)?;
        cluster.wait_for_leader(Duration::from_secs(30));
        // Promote joiners after 1 s of stability, not 10 s.
        cluster.cli_at(
            0,
            &[
                "operator",
                "raft",
                "autopilot",
                "set-config",
                "-server-stabilization-time=1s",
                "-cleanup-dead-servers=false",
            ],
        );
        let leader_api = cluster.address(0);
        for i in 1..options.nodes {
            cluster.cli_at(i, &["operator", "raft", "join", &leader_api]);
            cluster.try_unseal(i)?;
        }
        cluster.setup();
        cluster.wait_for_voters(options.nodes);
        cluster.wait_until_kv_ready();
        cluster.started_in = begin.elapsed();
        Ok(cluster)
    }

    /// KV v2 at `secret`, the broker's policy and its AppRole login.
    fn setup(&mut self) {
        self.bao(&["secrets", "enable", "-path=secret", "kv-v2"]);
        // Every version kept (KV v2 keeps 10 by default), so a test can
        // check each version a watcher received against what Vault holds.
        self.bao(&["write", "secret/config", "max_versions=10000"]);
        self.bao_with_stdin(&["policy", "write", "coffer-broker", "-"], BROKER_POLICY);
        self.bao(&["auth", "enable", "approle"]);
        self.bao(&[
            "write",
            "auth/approle/role/coffer-broker",
            "token_policies=coffer-broker",
            "token_ttl=1h",
            "token_max_ttl=24h",
        ]);
        let role_id = self.bao(&[
            "read",
            "-field=role_id",
            "auth/approle/role/coffer-broker/role-id",
        ]);
        let secret_id = self.bao(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/coffer-broker/secret-id",
        ]);
        self.approle = (
            self.file("role-id", role_id.trim()),
            self.file("secret-id", secret_id.trim()),
        );
    }

    /// How many nodes the cluster was made with.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s API address, `http://127.0.0.1:PORT`.
    pub fn address(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].api_port)
    }

    /// Node `i`'s API socket address, `127.0.0.1:PORT` (for a proxy).
    pub fn socket(&self, i: usize) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.nodes[i].api_port).into()
    }

    /// Every node's API socket address, in node order.
    pub fn sockets(&self) -> Vec<std::net::SocketAddr> {
        (0..self.len()).map(|i| self.socket(i)).collect()
    }

    /// The root token (for a test's own CLI or HTTP calls).
    pub fn root_token(&self) -> &str {
        self.root_token.expose_secret()
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file in the scratch directory and returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Whether node `i`'s process runs (not killed; a paused one runs).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// Node `i`'s `/v1/sys/health` status: 200 active, 429 standby, 503
    /// sealed, 501 uninitialised; `None` when it does not answer in 1 s.
    pub fn health(&self, i: usize) -> Option<u16> {
        if !self.is_running(i) {
            return None;
        }
        node_health(self.nodes[i].api_port)
    }

    /// The active node, if one answers as active now.
    pub fn try_leader(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.health(i) == Some(200))
    }

    /// The active node, waiting up to 30 s for one.
    pub fn leader(&self) -> usize {
        self.wait_for_leader(Duration::from_secs(30)).0
    }

    /// Waits until a node answers as active: its index and how long the
    /// wait took (after a [`kill`](Self::kill) of the leader: the election).
    pub fn wait_for_leader(&self, timeout: Duration) -> (usize, Duration) {
        let begin = Instant::now();
        let leader = eventually(timeout, "an active OpenBao node", || self.try_leader());
        (leader, begin.elapsed())
    }

    /// The standbys that run, unsealed (answering 429).
    pub fn standbys(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.health(i) == Some(429))
            .collect()
    }

    /// The raft voters the active node lists.
    pub fn voters(&self) -> usize {
        let peers = self.bao(&["operator", "raft", "list-peers", "-format=json"]);
        let peers: Value = serde_json::from_str(&peers).unwrap_or_default();
        peers["data"]["config"]["servers"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| s["voter"] == true).count())
    }

    fn wait_for_voters(&self, n: usize) {
        eventually(Duration::from_secs(60), &format!("{n} raft voters"), || {
            (self.voters() == n).then_some(())
        });
    }

    /// KV v2 answers on every running node (a standby says "waiting for
    /// the primary to upgrade" for a moment after the mount is made).
    fn wait_until_kv_ready(&self) {
        for i in 0..self.len() {
            eventually(Duration::from_secs(30), "KV v2 on every node", || {
                let (status, _) = self.http(i, "GET", "/v1/secret/data/coffer-ready", None)?;
                (status == 404).then_some(())
            });
        }
    }

    /// SIGKILLs node `i` (its data stays for [`restart`](Self::restart)).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill();
        }
    }

    /// Starts node `i` again on its data, unseals it and waits until it is
    /// a standby or the active node.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.unseal(i);
        eventually(
            Duration::from_secs(60),
            "the restarted node to serve",
            || matches!(self.health(i), Some(200 | 429)).then_some(()),
        );
    }

    /// Freezes node `i` (SIGSTOP): it holds its connections and answers
    /// nothing, as a node behind a partition does.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a [`pause`](Self::pause)d node run again (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].process.as_ref().expect("node runs").pid();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = self
            .dir
            .path()
            .join(format!("node{i}.{}.log", node.logs.len()));
        let mut command = Command::new(bao_binary());
        command
            .arg("server")
            .arg(format!("-config={}", node.config.display()))
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR");
        node.process = Some(Process::spawn(command, log.clone()));
        node.logs.push(log);
    }

    /// Unseals node `i` with the threshold of keys, retrying while it is
    /// not yet listening or has not yet joined. A node that took the
    /// threshold unseals in the background (a raft joiner first fetches the
    /// cluster's keyring from the leader, seconds on a loaded machine): its
    /// seal status is watched, and the keys are given again only when it
    /// asks for them anew and a while has passed, never every poll (a
    /// busy machine once timed out while the keys kept being resubmitted).
    fn unseal(&self, i: usize) {
        if let Err(outputs) = self.try_unseal(i) {
            panic!("{outputs}");
        }
    }

    /// [`unseal`](Self::unseal), or every node's output when node `i` is
    /// still sealed after 90 s (a cluster being made is then made anew).
    fn try_unseal(&self, i: usize) -> Result<(), String> {
        let mut given: Option<Instant> = None;
        let unsealed = within(Duration::from_secs(90), || {
            let (status, reply) = self.http(i, "GET", "/v1/sys/seal-status", None)?;
            if status == 200 && reply["sealed"] == false {
                return Some(());
            }
            let waiting = reply["progress"] == 0 || status != 200;
            if !waiting || given.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
                return None;
            }
            given = Some(Instant::now());
            for key in &self.unseal_keys[..2] {
                let body = serde_json::json!({ "key": key.expose_secret() });
                let (status, reply) = self.http(i, "PUT", "/v1/sys/unseal", Some(&body))?;
                if status != 200 {
                    return None;
                }
                if reply["sealed"] == false {
                    return Some(());
                }
            }
            None
        });
        unsealed.ok_or_else(|| format!("node {i} still sealed after 90 s\n{}", self.log_tails()))
    }

    fn any_exited(&mut self) -> bool {
        self.nodes.iter_mut().any(|n| {
            n.process
                .as_mut()
                .is_some_and(|p| p.wait(Duration::from_millis(1)).is_some())
        })
    }

    /// Every node's output so far, for a failure message.
    pub fn outputs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let out = n.process.as_ref().map(Process::output).unwrap_or_default();
                format!("--- node {i} ---\n{out}")
            })
            .collect()
    }

    /// The last server log lines of every node (audit lines left out), for
    /// a failure message.
    fn log_tails(&self) -> String {
        let mut tails = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let out = node
                .process
                .as_ref()
                .map(Process::output)
                .unwrap_or_default();
            let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('{')).collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            tails.push_str(&format!("--- node {i} ---\n{tail}\n"));
        }
        tails
    }

    /// Runs the `bao` CLI as root against the active node; panics on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        self.bao_with_stdin(args, "")
    }

    /// Like [`bao`](Self::bao), with `stdin` piped in (for `-` arguments).
    pub fn bao_with_stdin(&self, args: &[&str], stdin: &str) -> String {
        let leader = self.leader();
        let (ok, out, err) = cli(&self.address(leader), self.root_token(), args, stdin);
        assert!(ok, "bao {args:?} failed:\n{out}\n{err}");
        out
    }

    /// Runs the `bao` CLI as root against node `i`; (success, stdout, stderr).
    pub fn try_bao_at(&self, i: usize, args: &[&str]) -> (bool, String, String) {
        cli(&self.address(i), self.root_token(), args, "")
    }

    fn cli_at(&self, i: usize, args: &[&str]) -> String {
        let (ok, out, err) = self.try_bao_at(i, args);
        assert!(ok, "bao {args:?} on node {i} failed:\n{out}\n{err}");
        out
    }

    /// One HTTP request as root to node `i`: the status and the JSON reply
    /// (`Null` when empty); `None` when the node does not answer in 5 s.
    pub fn http(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        http_request(
            self.nodes[i].api_port,
            method,
            path,
            Some(self.root_token()),
            body,
            Duration::from_secs(5),
        )
    }

    /// Writes `kv` at `secret/<path>` through node `i` (a standby forwards
    /// it); the new version, or the HTTP status / `None` it failed with.
    pub fn write_at(&self, i: usize, path: &str, kv: &[(&str, &str)]) -> Result<u64, Option<u16>> {
        let data: serde_json::Map<String, Value> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let body = serde_json::json!({ "data": data });
        match self.http(i, "POST", &format!("/v1/secret/data/{path}"), Some(&body)) {
            Some((200, reply)) => Ok(reply["data"]["version"].as_u64().unwrap_or(0)),
            Some((status, _)) => Err(Some(status)),
            None => Err(None),
        }
    }

    /// Writes `kv` at `secret/<path>` through the active node; the version.
    pub fn write(&self, path: &str, kv: &[(&str, &str)]) -> u64 {
        let leader = self.leader();
        self.write_at(leader, path, kv)
            .unwrap_or_else(|e| panic!("write {path} on node {leader}: {e:?}"))
    }

    /// The current data and version of `secret/<path>` on the active node.
    pub fn read(&self, path: &str) -> Option<(u64, Value)> {
        self.read_at(self.leader(), path, None)
    }

    /// Version `version` (or the current one) of `secret/<path>` as node
    /// `i` answers it (a standby from its own copy): (version, data).
    pub fn read_at(&self, i: usize, path: &str, version: Option<u64>) -> Option<(u64, Value)> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let (status, reply) =
            self.http(i, "GET", &format!("/v1/secret/data/{path}{query}"), None)?;
        (status == 200).then(|| {
            (
                reply["data"]["metadata"]["version"].as_u64().unwrap_or(0),
                reply["data"]["data"].clone(),
            )
        })
    }

    /// The KV v2 metadata of `secret/<path>` on the active node
    /// (`current_version`, `versions`, ...).
    pub fn metadata(&self, path: &str) -> Value {
        let leader = self.leader();
        let (status, reply) = self
            .http(leader, "GET", &format!("/v1/secret/metadata/{path}"), None)
            .unwrap_or((0, Value::Null));
        assert_eq!(status, 200, "metadata of {path}: {reply}");
        reply["data"].clone()
    }

    /// How many audited requests each node answered with `operation` on
    /// API path `path` (e.g. `read`, `secret/data/shop/db`), in node order,
    /// over every start of each node.
    pub fn audited_per_node(&self, operation: &str, path: &str) -> Vec<usize> {
        let op = format!("\"operation\":\"{operation}\"");
        let p = format!("\"path\":\"{path}\"");
        self.nodes
            .iter()
            .map(|n| {
                n.logs
                    .iter()
                    .map(|log| {
                        let text = std::fs::read_to_string(log).unwrap_or_default();
                        text.lines()
                            .filter(|l| l.starts_with("{\"") && l.contains("\"type\":\"request\""))
                            .filter(|l| l.contains(&op) && l.contains(&p))
                            .count()
                    })
                    .sum()
            })
            .collect()
    }

    /// Audited `operation`s on `path` summed over the nodes.
    pub fn audited(&self, operation: &str, path: &str) -> usize {
        self.audited_per_node(operation, path).iter().sum()
    }

    /// The KV data reads of broker path `path` (e.g. `shop/db`, on the
    /// mount `secret`) every node answered, summed (metadata not counted).
    pub fn reads(&self, path: &str) -> usize {
        self.audited("read", &format!("secret/data/{path}"))
    }
}

impl RaftCluster {
    /// A broker Vault config: AppRole login, `shop/*` on the KV v2 mount
    /// `secret`, at `address` (one node, a fault proxy; an empty address
    /// writes no `address:` line, for a list given in `extra`), then
    /// `extra` YAML lines.
    pub fn config_yaml(&self, address: &str, extra: &str) -> String {
        let address = if address.is_empty() {
            String::new()
        } else {
            format!("address: {address}\n")
        };
        format!(
            "{address}auth: {{method: approle, roleIdFile: {}, secretIdFile: {}}}\n\
             mounts: [{{prefix: shop, mount: secret}}]\n{extra}",
            self.approle.0.display(),
            self.approle.1.display()
        )
    }

    /// The broker flags for [`config_yaml`](Self::config_yaml)`(address,
    /// extra)`, its file written in the scratch directory.
    pub fn vault_args(&self, address: &str, extra: &str) -> Vec<String> {
        let name = format!("vault-{}.yaml", crate::http::free_port());
        let config = self.file(&name, &self.config_yaml(address, extra));
        vec![
            "--store=vault".into(),
            "--vault-config".into(),
            config.display().to_string(),
        ]
    }

    /// Every node's address as a YAML flow list, `[http://..., ...]`.
    pub fn addresses_yaml(&self) -> String {
        let all: Vec<String> = (0..self.len()).map(|i| self.address(i)).collect();
        format!("[{}]", all.join(", "))
    }
}

impl Drop for RaftCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A paused node must run again to die promptly.
            if self.nodes[i].process.is_some() {
                let _ = Command::new("kill")
                    .args([
                        "-CONT",
                        &self.nodes[i].process.as_ref().unwrap().pid().to_string(),
                    ])
                    .status();
            }
            self.kill(i);
        }
    }
}

/// Node `i`'s configuration: raft storage with its own data directory and
/// `retry_join` to the others, an HTTP listener on loopback, its audit log
/// on its own output.
fn node_config(
    dir: &tempfile::TempDir,
    i: usize,
    ports: &[u16],
    options: &ClusterOptions,
) -> String {
    let joins: String = ports
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, p)| format!("  retry_join {{ leader_api_addr = \"http://127.0.0.1:{p}\" }}\n"))
        .collect();
    let port = ports[i];
    format!(
        "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"node{i}\"\n  \
         performance_multiplier = 1\n  autopilot_reconcile_interval = \"1s\"\n  autopilot_update_interval = \"500ms\"\n{joins}}}\n\
         listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
         cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
         api_addr = \"http://127.0.0.1:{port}\"\n\
         cluster_addr = \"https://127.0.0.1:{cluster}\"\n\
         disable_standby_reads = {standby}\n\
         audit \"file\" \"reads\" {{\n  options {{\n    file_path = \"stdout\"\n  }}\n}}\n",
        data = dir.path().join(format!("data{i}")).display(),
        cluster = port + 1,
        standby = options.disable_standby_reads,
    )
}

/// `/v1/sys/health` of the node on `port`, or `None` within 1 s.
fn node_health(port: u16) -> Option<u16> {
    http_request(
        port,
        "GET",
        "/v1/sys/health",
        None,
        None,
        Duration::from_secs(1),
    )
    .map(|r| r.0)
}

/// One plain HTTP/1.0 request to `127.0.0.1:port`.
fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Option<(u16, Value)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let token = token
        .map(|t| format!("X-Vault-Token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{token}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    Some((status, json))
}

/// Runs the `bao` CLI with `token` against `addr`.
fn cli(addr: &str, token: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(bao_binary())
        .args(args)
        .env("BAO_ADDR", addr)
        .env("BAO_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
