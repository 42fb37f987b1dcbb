//! Smoke test of the shipped manifests: each rendered Deployment's
//! containers run as their real binaries with exactly the rendered `args` and
//! `env`. What the cluster would provide is faked: every mounted path is
//! remapped to a temp directory filled as the kubelet would fill it (ConfigMaps
//! from the render, TLS from a test CA, projected tokens minted by the test),
//! in-cluster addresses point at local stand-ins (the API server's OIDC
//! endpoints, a real OpenBao for Vault), and `0.0.0.0:PORT` listens on
//! `127.0.0.1:0`. Each must start and answer health; a flag a binary does
//! not know makes it exit, which fails the test.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use coffer_broker::auth::jwt::ProjectedClaims;
use coffer_tests::{
    ISSUER, Key, Process,
    deploy::{KUSTOMIZATIONS, find, https_request, objects},
    eventually, fixture, http,
    https::HttpsServer,
    mint_claims,
    openbao::{OpenBao, serve_json},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The value planted in Vault; it must reach the app's file and no log.
const CANARY: &str = "canary-db-password-5c1e";

/// What the cluster provides, faked locally.
struct Cluster {
    /// The API server's OIDC discovery and JWKS (kubernetes.default.svc).
    api: HttpsServer,
    /// Vault (vault.vault.svc), when the overlay uses it.
    bao: Option<OpenBao>,
    /// The CA that signs the broker's certificate, and that certificate.
    broker_ca: String,
    broker_cert: String,
    broker_key: String,
    /// `https://localhost:PORT` once a broker is listening.
    broker_url: Mutex<Option<String>>,
}

impl Cluster {
    fn start(with_vault: bool) -> Self {
        let base = Arc::new(Mutex::new(String::new()));
        let jwks = std::fs::read_to_string(fixture("jwks-a.json")).unwrap();
        let api = {
            let (base, jwks) = (base.clone(), jwks.clone());
            HttpsServer::start(Arc::new(move |seen| {
                match seen.path.as_str() {
                "/.well-known/openid-configuration" => (
                    200,
                    json!({"issuer": ISSUER, "jwks_uri": format!("{}/openid/v1/jwks", base.lock().unwrap())})
                        .to_string(),
                ),
                "/openid/v1/jwks" => (200, jwks.clone()),
                _ => (404, "{}".into()),
            }
            }))
        };
        *base.lock().unwrap() = api.url.clone();
        let bao = with_vault.then(|| {
            let bao = OpenBao::start_tls();
            bao.bao(&["auth", "enable", "jwt"]);
            bao.bao(&[
                "write",
                "auth/jwt/config",
                &format!("jwks_url={}", serve_json(jwks)),
                &format!("bound_issuer={ISSUER}"),
            ]);
            // As docs/deploy.md sets it up: the broker's own token, audience vault.
            bao.bao(&[
                "write",
                "auth/jwt/role/coffer-broker",
                "role_type=jwt",
                "bound_audiences=vault",
                "user_claim=sub",
                "bound_subject=system:serviceaccount:coffer:coffer-broker",
                "token_policies=coffer-broker",
                "token_ttl=1h",
            ]);
            bao.policy(
                "coffer-broker",
                "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
                 path \"secret/metadata/*\" { capabilities = [\"read\", \"list\"] }\n",
            );
            bao.bao(&[
                "kv",
                "put",
                "secret/shop/web/db",
                &format!("password={CANARY}"),
            ]);
            bao
        });
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![
            "localhost".to_string(),
            "coffer-broker.coffer.svc".to_string(),
        ])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
        Self {
            api,
            bao,
            broker_ca: ca.pem(),
            broker_cert: cert.pem(),
            broker_key: key.serialize_pem(),
            broker_url: Mutex::new(None),
        }
    }

    /// Points in-cluster addresses at the local stand-ins.
    fn rewrite_addresses(&self, text: &str) -> String {
        const ISSUER_MARK: &str = "\u{0}issuer\u{0}";
        let mut text = text
            .replace(ISSUER, ISSUER_MARK)
            .replace("https://kubernetes.default.svc", &self.api.url)
            .replace(ISSUER_MARK, ISSUER);
        if let Some(bao) = &self.bao {
            text = text.replace("https://vault.vault.svc:8200", &bao.addr);
        }
        if let Some(url) = &*self.broker_url.lock().unwrap() {
            text = text.replace("https://coffer-broker.coffer.svc:8443", url);
        }
        // Every 0.0.0.0:PORT listens on a free loopback port instead.
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("0.0.0.0:") {
            out.push_str(&rest[..at]);
            out.push_str("127.0.0.1:0");
            rest = rest[at + "0.0.0.0:".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out.push_str(rest);
        out
    }

    /// The content of a ConfigMap the user creates by hand (not rendered).
    fn external_config_map(&self, name: &str) -> Vec<(String, String)> {
        let ca = match name {
            "kube-root-ca.crt" => std::fs::read_to_string(&self.api.ca_file).unwrap(),
            "coffer-vault-ca" => {
                let bao = self.bao.as_ref().expect("the overlay needs Vault");
                std::fs::read_to_string(bao.ca_file.as_ref().unwrap()).unwrap()
            }
            "coffer-ca" => self.broker_ca.clone(),
            other => panic!("ConfigMap {other} is neither rendered nor documented"),
        };
        vec![("ca.crt".to_string(), ca)]
    }

    /// The content of a Secret the user creates (docs/deploy.md).
    fn secret(&self, name: &str) -> Vec<(String, Vec<u8>)> {
        match name {
            // One test certificate (for localhost) serves both.
            "coffer-broker-tls" | "coffer-injector-tls" => vec![
                ("tls.crt".into(), self.broker_cert.clone().into_bytes()),
                ("tls.key".into(), self.broker_key.clone().into_bytes()),
            ],
            // As docs/deploy.md makes it: 32 random bytes, base64.
            "coffer-dev-store-key" => vec![(
                "key".into(),
                b"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".to_vec(),
            )],
            other => panic!("Secret {other} is not documented"),
        }
    }
}

/// One container of a rendered pod, running as its real binary.
struct Container {
    process: Process,
    /// Where each volume of the pod lives on this machine.
    root: tempfile::TempDir,
    memory: tempfile::TempDir,
}

impl Container {
    fn volume_dir(&self, name: &str) -> PathBuf {
        let memory = self.memory.path().join(name);
        if memory.exists() {
            memory
        } else {
            self.root.path().join(name)
        }
    }
}

/// Fills `dir` as the kubelet fills `volume`.
fn populate(volume: &Value, dir: &Path, rendered: &[Value], pod: &Value, cluster: &Cluster) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    let config_map = |source: &Value| {
        let name = source["name"].as_str().unwrap();
        let data: Vec<(String, String)> = rendered
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
            .map(|cm| {
                cm["data"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_else(|| cluster.external_config_map(name));
        let items = source["items"].as_array();
        for (key, value) in data {
            let path = match items {
                Some(items) => match items.iter().find(|i| i["key"] == key.as_str()) {
                    Some(item) => item["path"].as_str().unwrap().to_string(),
                    None => continue,
                },
                None => key,
            };
            write(&path, value.as_bytes());
        }
    };
    let namespace = pod["metadata"]["namespace"].as_str().unwrap();
    let service_account = pod["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    if let Some(source) = volume.get("configMap") {
        config_map(source);
    } else if let Some(source) = volume.get("secret") {
        for (key, value) in cluster.secret(source["secretName"].as_str().unwrap()) {
            write(&key, &value);
        }
    } else if let Some(projected) = volume.get("projected") {
        for source in projected["sources"].as_array().unwrap() {
            if let Some(token) = source.get("serviceAccountToken") {
                let audience = token["audience"]
                    .as_str()
                    .unwrap_or("https://kubernetes.default.svc");
                let claims = ProjectedClaims::projected(
                    ISSUER,
                    audience,
                    namespace,
                    service_account,
                    Some(&format!("{service_account}-0")),
                    Duration::from_secs(3600),
                );
                write(
                    token["path"].as_str().unwrap(),
                    mint_claims(Key::Rsa, &claims).as_bytes(),
                );
            } else if let Some(source) = source.get("configMap") {
                config_map(source);
            } else {
                panic!("unsupported projected source {source}");
            }
        }
    } else if volume.get("emptyDir").is_none() && volume.get("persistentVolumeClaim").is_none() {
        panic!("unsupported volume {volume}");
    }
}

/// Starts container `name` (an init container when `init`) of Deployment
/// `deployment` as its real binary.
fn start(
    rendered: &[Value],
    deployment: &str,
    name: &str,
    cluster: &Cluster,
    extra_env: &[(&str, &str)],
) -> Container {
    let pod = find(rendered, "Deployment", deployment);
    let spec = &pod["spec"]["template"]["spec"];
    let container = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec[k].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {deployment}"));
    assert!(
        container.get("command").is_none(),
        "the images' entrypoint is the binary: give args, not command"
    );
    let image = container["image"].as_str().unwrap();
    let binary = match image.split(':').next().unwrap().rsplit('/').next().unwrap() {
        "broker" => "coffer-broker",
        "sidecar" => "coffer-sidecar",
        "injector" => "coffer-injector",
        other => panic!("no binary for image {image} ({other})"),
    };

    let root = tempfile::tempdir().unwrap();
    let memory = tempfile::Builder::new()
        .prefix("coffer-smoke-")
        .tempdir_in("/dev/shm")
        .unwrap();
    // mountPath -> local directory, longest first so nested mounts win.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let volume_name = mount["name"].as_str().unwrap();
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume_name)
            .unwrap_or_else(|| panic!("volume {volume_name} is mounted but not declared"));
        let in_memory = volume["emptyDir"]["medium"] == "Memory";
        let dir = if in_memory {
            memory.path()
        } else {
            root.path()
        }
        .join(volume_name);
        populate(volume, &dir, rendered, pod, cluster);
        mounts.push((mount["mountPath"].as_str().unwrap().to_string(), dir));
    }
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let remap = |text: &str| {
        let mut text = cluster.rewrite_addresses(text);
        for (mount_path, dir) in &mounts {
            text = replace_path(&text, mount_path, &dir.display().to_string());
        }
        text
    };
    // ConfigMap contents name paths and addresses too.
    for (_, dir) in &mounts {
        for entry in walk(dir) {
            if let Ok(text) = std::fs::read_to_string(&entry) {
                std::fs::write(&entry, remap(&text)).unwrap();
            }
        }
    }

    let mut command = Command::new(coffer_tests::binary(binary));
    for arg in container["args"].as_array().into_iter().flatten() {
        command.arg(remap(arg.as_str().unwrap()));
    }
    command.env_clear();
    for env in container["env"].as_array().into_iter().flatten() {
        let value = env["value"]
            .as_str()
            .unwrap_or_else(|| panic!("env {} needs a literal value here", env["name"]));
        command.env(env["name"].as_str().unwrap(), remap(value));
    }
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let process = Process::spawn(command, root.path().join("output.log"));
    Container {
        process,
        root,
        memory,
    }
}

/// Replaces `from` where it is a whole path or a path's leading directories
/// (`/secrets`, `/secrets/x`; not `/var/run/secrets`, not `/secretsx`).
fn replace_path(text: &str, from: &str, to: &str) -> String {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().last().or_else(|| out.chars().last());
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        let whole =
            !before.is_some_and(is_path_char) && after.is_none_or(|c| c == '/' || !is_path_char(c));
        out.push_str(if whole { to } else { from });
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Starts a server container and waits for the address it bound (written
/// to `COFFER_ADDR_FILE`: an environment variable, not a flag, so the
/// rendered args stay exactly as rendered).
fn start_listening(
    rendered: &[Value],
    deployment: &str,
    name: &str,
    cluster: &Cluster,
) -> (Container, String) {
    let addr_dir = tempfile::tempdir().unwrap();
    let addr_file = addr_dir.path().join("addr");
    let mut container = start(
        rendered,
        deployment,
        name,
        cluster,
        &[("COFFER_ADDR_FILE", addr_file.to_str().unwrap())],
    );
    let addr = eventually(
        Duration::from_secs(30),
        &format!("{name} to listen"),
        || {
            if let Some(status) = container.process.wait(Duration::ZERO) {
                panic!(
                    "{name} exited ({status}) with the rendered args:\n{}",
                    container.process.output()
                );
            }
            std::fs::read_to_string(&addr_file).ok()
        },
    );
    (container, addr)
}

/// Starts the broker of `overlay` and waits until grpc health says SERVING.
/// Returns the running broker and its `https://localhost:PORT`.
async fn start_broker(rendered: &[Value], cluster: &Cluster) -> (Container, String) {
    let (broker, addr) = start_listening(rendered, "coffer-broker", "broker", cluster);
    let port = addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{port}");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cluster.broker_ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the broker never reported SERVING ({status:?}):\n{}",
            broker.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (broker, url)
}

/// Starts the injector of a rendered overlay and waits for /healthz.
fn start_injector(rendered: &[Value], cluster: &Cluster) -> Container {
    let (injector, addr) = start_listening(rendered, "coffer-injector", "injector", cluster);
    for path in ["/healthz", "/readyz"] {
        eventually(Duration::from_secs(20), "the injector's health", || {
            let status = https_request(&addr, &cluster.broker_ca, "GET", path, b"").map(|r| r.0);
            (status == Some(200)).then_some(())
        });
    }
    injector
}

/// The admin address a JSON-logging sidecar bound.
fn admin_addr(sidecar: &Container) -> String {
    eventually(Duration::from_secs(20), "the admin endpoint", || {
        sidecar.process.output().lines().find_map(|line| {
            let record: Value = serde_json::from_str(line).ok()?;
            (record["message"] == "admin endpoint listening")
                .then(|| record["addr"].as_str().map(str::to_string))
                .flatten()
        })
    })
}

fn assert_no_canary(containers: &[&Container]) {
    for container in containers {
        assert!(
            !container.process.output().contains(CANARY),
            "the secret value reached a log"
        );
    }
}

#[tokio::test]
async fn the_vault_overlay_serves_the_example_app() {
    let cluster = Cluster::start(true);
    let (broker, url) = start_broker(&objects("overlays/vault"), &cluster).await;
    *cluster.broker_url.lock().unwrap() = Some(url);
    let sidecar = start(&objects("example/native"), "web", "coffer", &cluster, &[]);
    let admin = admin_addr(&sidecar);
    eventually(Duration::from_secs(30), "the sidecar to be ready", || {
        (http(&admin, "GET", "/ready").map(|(s, _)| s) == Some(200)).then_some(())
    });
    let file = sidecar.volume_dir("secrets").join("db-password");
    assert_eq!(std::fs::read_to_string(file).unwrap(), CANARY);
    assert_eq!(http(&admin, "GET", "/healthz").map(|(s, _)| s), Some(200));
    assert!(
        std::fs::metadata(broker.volume_dir("audit").join("audit.log")).is_ok_and(|m| m.len() > 0),
        "the vault overlay writes its audit file"
    );
    assert_no_canary(&[&broker, &sidecar]);
}

#[tokio::test]
async fn the_tokenreview_overlay_starts_and_serves_health() {
    let cluster = Cluster::start(true);
    let (broker, _) = start_broker(&objects("overlays/tokenreview"), &cluster).await;
    assert!(
        broker
            .process
            .output()
            .contains("serving secrets from Vault")
    );
}

#[tokio::test]
async fn the_dev_overlay_starts_persistent_and_says_it_is_not_for_production() {
    let cluster = Cluster::start(false);
    let (broker, _) = start_broker(&objects("overlays/dev"), &cluster).await;
    let output = broker.process.output();
    assert!(output.contains("NOT FOR PRODUCTION"), "{output}");
    assert!(output.contains("\"persistent\":true"), "{output}");
}

#[tokio::test]
async fn the_init_mode_example_writes_its_secrets_and_exits() {
    let cluster = Cluster::start(true);
    let (broker, url) = start_broker(&objects("overlays/vault"), &cluster).await;
    *cluster.broker_url.lock().unwrap() = Some(url);
    let mut sidecar = start(
        &objects("example/init-mode"),
        "web",
        "coffer",
        &cluster,
        &[],
    );
    let status = sidecar.process.wait(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "init container: {status:?}\n{}",
        sidecar.process.output()
    );
    let file = sidecar.volume_dir("secrets").join("db-password");
    assert_eq!(std::fs::read_to_string(file).unwrap(), CANARY);
    assert_no_canary(&[&broker, &sidecar]);
}

#[test]
fn a_flag_the_binary_does_not_know_fails() {
    let mut rendered = objects("overlays/dev");
    let deployment = rendered
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .unwrap()
        .push("--no-such-flag=1".into());
    let cluster = Cluster::start(false);
    let mut broker = start(&rendered, "coffer-broker", "broker", &cluster, &[]);
    let status = broker.process.wait(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{}",
        broker.process.output()
    );
}

#[test]
fn the_injector_of_every_overlay_starts_and_answers_health() {
    let cluster = Cluster::start(false);
    for overlay in ["overlays/vault", "overlays/tokenreview", "overlays/dev"] {
        let injector = start_injector(&objects(overlay), &cluster);
        assert!(injector.process.output().contains("injector listening"));
    }
}

/// What the tests above start: (kustomization, Deployment, container).
const STARTED: &[(&str, &str, &str)] = &[
    ("overlays/vault", "coffer-broker", "broker"),
    ("overlays/vault", "coffer-injector", "injector"),
    ("overlays/tokenreview", "coffer-broker", "broker"),
    ("overlays/tokenreview", "coffer-injector", "injector"),
    ("overlays/dev", "coffer-broker", "broker"),
    ("overlays/dev", "coffer-injector", "injector"),
    ("example/native", "web", "coffer"),
    ("example/init-mode", "web", "coffer"),
];

#[test]
fn every_rendered_coffer_container_is_started_by_a_smoke_test() {
    for kustomization in KUSTOMIZATIONS {
        for object in objects(kustomization) {
            if object["kind"] != "Deployment" {
                continue;
            }
            let spec = &object["spec"]["template"]["spec"];
            for container in ["containers", "initContainers"]
                .iter()
                .filter_map(|k| spec[k].as_array())
                .flatten()
            {
                let image = container["image"].as_str().unwrap();
                if !image.starts_with("coffer/") {
                    continue; // the example's own app image
                }
                let key = (
                    *kustomization,
                    object["metadata"]["name"].as_str().unwrap(),
                    container["name"].as_str().unwrap(),
                );
                assert!(STARTED.contains(&key), "no smoke test starts {key:?}");
            }
        }
    }
}
