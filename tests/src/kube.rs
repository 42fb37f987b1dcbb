//! A real Kubernetes API server for the tests: etcd and kube-apiserver
//! v1.20.2 (built by `scripts/install-kube-apiserver`, which
//! `scripts/install-test-deps` runs) on 127.0.0.1, with a CA, serving
//! certificate, admin token and service-account signing key made per run.
//!
//! One server per test process ([`ApiServer::shared`]): it takes about 4 s
//! and 300 MB to start, so every test on it shares it, one at a time (one
//! may delete the cluster-wide objects another applied), each in
//! a namespace of its own ([`ApiServer::namespace`]; a 1.20 server with no
//! controller-manager never finishes deleting one). The server processes
//! are tied to the test process: a watchdog ends them when it exits.
//!
//! What a 1.20 server without controller-manager or kubelet cannot show:
//! pods stay Pending, no `default` service account appears by itself (the
//! harness creates the ones a test names), the `kubernetes.io/metadata.name`
//! namespace label is not set (1.21+), and there is no `policy/v1`, no gRPC
//! probe (1.24+) and no native sidecar (1.28+). It caches successful token
//! authentications for 10 s.
//!
//! The service-account issuer is the in-cluster one the shipped manifests
//! name, `https://kubernetes.default.svc.cluster.local`; its discovery
//! document points `jwks_uri` at this server's loopback address (as a real
//! cluster points it at its public address), so a broker configured as
//! deploy/ configures it needs nothing changed but addresses.

use std::{
    io::Write,
    ops::Deref,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Once, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;

use crate::{
    http::free_port,
    process::{Process, fixture},
    serial::{Lane, Turn},
};

/// The issuer of the server's service-account tokens: the in-cluster name
/// deploy/ configures.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A running etcd and kube-apiserver.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the serving certificate (PEM file).
    pub ca_file: PathBuf,
    /// The CA's certificate and key, to sign a webhook's serving certificate.
    ca: CertifiedIssuer<'static, KeyPair>,
    /// A kubeconfig with the admin token (group `system:masters`).
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    anonymous_discovery: Once,
    _etcd: Process,
    apiserver: Process,
}

/// Where `scripts/install-test-deps` put the API server, or
/// `$COFFER_KUBE_APISERVER_BIN`; panics with instructions (never skips).
pub fn apiserver_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("COFFER_KUBE_APISERVER_BIN") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kube-apiserver");
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps (it builds kube-apiserver once per machine)",
        path.display()
    );
    path
}

fn etcd_binary() -> PathBuf {
    let found = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    found.expect("etcd is missing: run scripts/install-test-deps (Debian's etcd-server)")
}

/// Runs `program args` under a shell watchdog that ends it when the test
/// process (`owner`) is gone, so a server shared through a `static` (never
/// dropped) does not outlive the test process.
fn tied(program: &Path, args: &[String]) -> Command {
    const WATCHDOG: &str = r#"owner=$1; shift
"$@" & child=$!
trap 'kill $child 2>/dev/null; wait $child; exit 0' TERM INT
while kill -0 "$owner" 2>/dev/null && kill -0 $child 2>/dev/null; do sleep 0.2; done
kill $child 2>/dev/null; wait $child"#;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .arg(program)
        .args(args);
    command
}

/// The process's one API server, held by one test at a time (see
/// [`ApiServer::shared`]).
pub struct SharedApiServer {
    server: &'static ApiServer,
    _turn: Turn,
}

impl Deref for SharedApiServer {
    type Target = ApiServer;

    fn deref(&self) -> &ApiServer {
        self.server
    }
}

impl ApiServer {
    /// The server of this test process, started on first use, and the
    /// caller's turn on it: a test holds the cluster alone until it drops
    /// the turn, since one may delete what another applied (the overlays'
    /// ClusterRoleBindings).
    pub fn shared() -> SharedApiServer {
        static SERVER: OnceLock<ApiServer> = OnceLock::new();
        static TURN: Lane = Lane::new();
        let turn = TURN.take();
        SharedApiServer {
            server: SERVER.get_or_init(ApiServer::start),
            _turn: turn,
        }
    }

    /// Starts etcd and the API server and waits until `/readyz` answers.
    pub fn start() -> Self {
        let apiserver_bin = apiserver_binary();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);

        // etcd, on loopback ports of its own.
        let (etcd_client, etcd_peer) = (free_port(), free_port());
        let etcd_args = vec![
            "--name=coffer-test".to_string(),
            format!("--data-dir={}", path("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=coffer-test=http://127.0.0.1:{etcd_peer}"),
            "--log-level=warn".to_string(),
        ];
        let etcd = Process::spawn(tied(&etcd_binary(), &etcd_args), path("etcd.log"));

        // A CA, the serving certificate, the admin token.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coffer test cluster CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let serving_key = KeyPair::generate().unwrap();
        let serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .unwrap()
        .signed_by(&serving_key, &ca)
        .unwrap();
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("serving.pem"), serving.pem()).unwrap();
        std::fs::write(path("serving-key.pem"), serving_key.serialize_pem()).unwrap();
        let admin_token = random_token();
        std::fs::write(
            path("tokens.csv"),
            format!("{admin_token},coffer-test-admin,coffer-test-admin,system:masters\n"),
        )
        .unwrap();

        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            "--insecure-port=0".to_string(),
            format!("--tls-cert-file={}", path("serving.pem").display()),
            format!("--tls-private-key-file={}", path("serving-key.pem").display()),
            format!("--client-ca-file={}", path("ca.pem").display()),
            format!("--token-auth-file={}", path("tokens.csv").display()),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--service-account-issuer={SA_ISSUER}"),
            format!("--service-account-jwks-uri={url}/openid/v1/jwks"),
            format!(
                "--service-account-key-file={}",
                fixture("rsa-a.pub.pem").display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                fixture("rsa-a.pem").display()
            ),
            format!("--api-audiences={SA_ISSUER}"),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--endpoint-reconciler-type=none".to_string(),
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook".to_string(),
            "--feature-gates=BoundServiceAccountTokenVolume=true".to_string(),
            "--v=1".to_string(),
        ];
        let apiserver = Process::spawn(tied(&apiserver_bin, &args), path("apiserver.log"));

        let kubeconfig = path("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {admin_token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                path("ca.pem").display()
            ),
        )
        .unwrap();

        let server = Self {
            url,
            ca_file: path("ca.pem"),
            ca,
            kubeconfig,
            dir,
            anonymous_discovery: Once::new(),
            _etcd: etcd,
            apiserver,
        };
        let started = Instant::now();
        let until = started + Duration::from_secs(90);
        loop {
            let ready = server.kubectl(&["get", "--raw", "/readyz"]);
            if ready.status.success() {
                break;
            }
            assert!(
                Instant::now() < until,
                "kube-apiserver not ready after 90 s:\n{}\n{}",
                String::from_utf8_lossy(&ready.stderr),
                tail(&server.apiserver.output(), 40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "kube-apiserver ready at {} in {:?}",
            server.url,
            started.elapsed()
        );
        server
    }

    /// Lets anyone read the OIDC discovery endpoints, as clusters that
    /// publish their issuer do (Kubernetes' "Service Account Issuer
    /// Discovery"); off by default. Idempotent.
    pub fn allow_anonymous_discovery(&self) {
        // Two tests applying one new object at once may race to create it.
        self.anonymous_discovery.call_once(|| {
            self.apply(
                r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "coffer-test-anonymous-discovery"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "system:service-account-issuer-discovery"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                              "name": "system:unauthenticated"}]}"#,
            );
        });
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the API server printed so far.
    pub fn log(&self) -> String {
        self.apiserver.output()
    }

    /// Signs a serving certificate for `127.0.0.1` and `localhost` with the
    /// cluster CA (for a webhook the API server calls): (cert PEM, key PEM).
    pub fn serving_certificate(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The cluster CA's certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// `kubectl --kubeconfig <admin> args...`, its output whatever its status.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl` with `input` on its standard input (for `-f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is needed for the API server tests");
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl args...`, which must succeed; its standard output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `kubectl apply -f -` of `yaml`, which must succeed. Two tests
    /// applying the same new object at once race to create it: the loser
    /// applies again, as an update.
    pub fn apply(&self, yaml: &str) -> String {
        let mut attempts = 0;
        loop {
            let output = self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml));
            if output.status.success() {
                return String::from_utf8(output.stdout).unwrap();
            }
            let error = String::from_utf8_lossy(&output.stderr).into_owned();
            let raced = error.contains("AlreadyExists") || error.contains("has been modified");
            attempts += 1;
            assert!(
                raced && attempts < 5,
                "kubectl apply failed:\n{error}\n--- input ---\n{yaml}"
            );
        }
    }

    /// `kubectl get KIND NAME -n NS -o json`.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", kind, name, "-n", namespace, "-o", "json"]))
            .unwrap()
    }

    /// A fresh namespace `<prefix>-<n>`.
    pub fn namespace(&self, prefix: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.create_namespace(&name);
        name
    }

    /// Creates the namespace `name` unless it exists (no label beyond
    /// what 1.20 sets).
    pub fn create_namespace(&self, name: &str) {
        self.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "{name}"}}}}"#
        ));
    }

    /// Creates a service account (a 1.20 server without controller-manager
    /// makes none by itself).
    pub fn service_account(&self, namespace: &str, name: &str) {
        self.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {{"name": "{name}", "namespace": "{namespace}"}}}}"#
        ));
    }

    /// Creates a Pending pod `name` running as `service_account`; its uid.
    pub fn pod(&self, namespace: &str, name: &str, service_account: &str) -> String {
        let pod = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "serviceAccountName": service_account,
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "example.invalid/app:1"}],
            },
        });
        self.apply(&pod.to_string());
        self.get(namespace, "pod", name)["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// What the broker's pod has at /var/run/secrets/kubernetes.io/
    /// serviceaccount as deploy/ runs it: a directory holding `ca.crt` and
    /// the `token` of coffer/coffer-broker for the API server's audience.
    /// Creates the namespace `coffer` and its service accounts
    /// `coffer-broker` and `coffer-operator` on the way.
    pub fn broker_pod_credentials(&self) -> PathBuf {
        self.create_namespace("coffer");
        self.service_account("coffer", "coffer-broker");
        self.service_account("coffer", "coffer-operator");
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = self.dir().join(format!(
            "broker-pod-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&self.ca_file, dir.join("ca.crt")).unwrap();
        let token = self.token(
            "coffer",
            "coffer-broker",
            SA_ISSUER,
            None,
            Duration::from_secs(3600),
        );
        std::fs::write(dir.join("token"), token).unwrap();
        dir
    }

    /// A token of the operator account deploy/ ships (coffer/coffer-operator,
    /// audience `coffer`), as `kubectl -n coffer create token` makes it.
    pub fn operator_token(&self) -> String {
        self.token(
            "coffer",
            "coffer-operator",
            "coffer",
            None,
            Duration::from_secs(600),
        )
    }

    /// The example app's pod `name` in namespace `shop`, running as
    /// `shop/web` (creating the namespace and account if need be); its uid.
    pub fn shop_pod(&self, name: &str) -> String {
        self.create_namespace("shop");
        self.service_account("shop", "web");
        self.pod("shop", name, "web")
    }

    /// Deletes a pod at once (no kubelet is there to confirm a graceful end).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.kubectl_ok(&[
            "delete",
            "pod",
            name,
            "-n",
            namespace,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ]);
    }

    /// A token from the TokenRequest API (`kubectl create token`), for
    /// `namespace/service_account`, with `audience`, bound to `pod` when
    /// given.
    pub fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        pod: Option<&str>,
        lifetime: Duration,
    ) -> String {
        let duration = format!("{}s", lifetime.as_secs());
        let mut args = vec![
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--audience",
            audience,
            "--duration",
            &duration,
        ];
        if let Some(pod) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        self.kubectl_ok(&args).trim().to_string()
    }

    /// GETs `path` on the server as `token` (none: anonymous) with `accept`;
    /// (status, content type, body).
    pub fn get_raw(&self, path: &str, token: Option<&str>, accept: &str) -> (u16, String, String) {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--cacert"])
            .arg(&self.ca_file)
            .args(["-H", &format!("Accept: {accept}")])
            .args(["-o", "-", "-w", "\n%{http_code} %{content_type}"]);
        if let Some(token) = token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let output = command
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("curl");
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, last) = text.rsplit_once('\n').unwrap();
        let (status, content_type) = last.split_once(' ').unwrap_or((last, ""));
        (
            status.parse().unwrap(),
            content_type.to_string(),
            body.to_string(),
        )
    }
}

/// `n` lines from the end of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// 32 random bytes, hex.
fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
