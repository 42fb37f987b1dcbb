//! Every example in docs/ is executed, so an example cannot drift from the
//! product again (issue #22: `{{ source.password }}` in docs/deploy.md was
//! admitted, then the sidecar failed and the pod never became ready).
//!
//! Each ```` ```yaml ```` block names what it is after the language, and is
//! checked by the real thing:
//!
//! | marker | checked by |
//! |---|---|
//! | `sidecar-config` | `coffer-sidecar --check-config`, then a real `--once` run against a broker holding the secrets it names |
//! | `sidecar-secrets` | the same, for a `secrets:` list under a minimal global part |
//! | `sidecar-actions` | `--check-config`, each non-comment line as the global `action` |
//! | `sidecar-proxies` | `--check-config`, for a `proxies:` list under a minimal global part (no run: the upstreams are examples) |
//! | `policy` / `policy-rules` | `cofferctl policy lint` (rules under `rules:`) |
//! | `auth-config` / `authenticator` | the broker's own parser (one authenticator's settings under a minimal entry) |
//! | `vault-config` / `vault-auth` / `vault-mounts` | the Vault store's parser and checks (a fragment under a minimal config) |
//! | `kubernetes` / `pod-spec` | `kubernetes-validate --strict` (a pod's `spec:` as a Pod) |
//! | `pod-annotations` | the real injector (an AdmissionReview), then the sidecar it configures runs `--once` against a broker |
//! | `kustomize-patch` | a kustomization of the `vault` overlay with the patch, through `kubectl kustomize` |
//! | `not-checked` | nothing: must say why on the fence line (`not-checked: <why>`) |
//!
//! The ```` ```jinja ```` template is the `templateFile` of the
//! `sidecar-config` example's real run.
//!
//! A yaml block without a marker fails the test, with the list of where.
//! ```` ```sh runnable ```` blocks run with bash against a test broker
//! (`COFFER_BROKER`, `COFFER_TOKEN_FILE` set; an operator allowed
//! everything on `shop/**`), in a scratch directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine;
use coffer_tests::{BrokerProcess, Key, binary, deploy, mint};
use serde_json::{Value, json};

use crate::injector::common as injector_common;

use injector_common::Injector;

/// One fenced block of a Markdown file.
#[derive(Debug, Clone)]
struct Block {
    file: String,
    line: usize,
    lang: String,
    marker: String,
    body: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

fn docs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root.join("README.md"));
    files.sort();
    files
}

/// Every fenced block of docs/*.md and README.md.
fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for path in docs() {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = format!(
            "{}/{}",
            path.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
            path.file_name().unwrap().to_string_lossy()
        );
        let mut open: Option<(usize, String, String, String)> = None;
        for (index, line) in text.lines().enumerate() {
            match &mut open {
                None => {
                    if let Some(info) = line.strip_prefix("```") {
                        let mut words = info.splitn(2, ' ');
                        let lang = words.next().unwrap_or("").to_string();
                        let marker = words.next().unwrap_or("").trim().to_string();
                        open = Some((index + 1, lang, marker, String::new()));
                    }
                }
                Some((start, lang, marker, body)) => {
                    if line.starts_with("```") {
                        out.push(Block {
                            file: name.clone(),
                            line: *start,
                            lang: lang.clone(),
                            marker: marker.clone(),
                            body: std::mem::take(body),
                        });
                        open = None;
                    } else {
                        body.push_str(line);
                        body.push('\n');
                    }
                }
            }
        }
    }
    out
}

fn yaml_blocks(kinds: &[&str]) -> Vec<Block> {
    blocks()
        .into_iter()
        .filter(|b| b.lang == "yaml")
        .filter(|b| kinds.iter().any(|k| b.marker == *k))
        .collect()
}

const KINDS: &[&str] = &[
    "sidecar-config",
    "sidecar-secrets",
    "sidecar-actions",
    "sidecar-proxies",
    "policy",
    "policy-rules",
    "auth-config",
    "authenticator",
    "vault-config",
    "vault-auth",
    "vault-mounts",
    "kubernetes",
    "pod-spec",
    "pod-annotations",
    "kustomize-patch",
];

#[test]
fn every_yaml_example_says_what_it_is() {
    let unmarked: Vec<String> = blocks()
        .into_iter()
        .filter(|b| b.lang == "yaml")
        .filter(|b| {
            let known = KINDS.contains(&b.marker.as_str());
            let excused = b
                .marker
                .strip_prefix("not-checked:")
                .is_some_and(|why| !why.trim().is_empty());
            !(known || excused)
        })
        .map(|b| format!("{} (```yaml {})", b.place(), b.marker))
        .collect();
    assert!(
        unmarked.is_empty(),
        "yaml examples without a known marker (see tests/e2e/deploy/docs_examples.rs):\n{}",
        unmarked.join("\n")
    );
    // Each kind is used, so a checker below is never dead code.
    for kind in KINDS {
        assert!(
            !yaml_blocks(&[kind]).is_empty(),
            "no example is marked {kind}"
        );
    }
}

// ---- the broker's parsers ----

#[test]
fn policy_examples_pass_policy_lint() {
    let dir = tempfile::tempdir().unwrap();
    for block in yaml_blocks(&["policy", "policy-rules"]) {
        let text = if block.marker == "policy-rules" {
            format!("rules:\n{}", block.body)
        } else {
            block.body.clone()
        };
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, &text).unwrap();
        let output = Command::new(binary("cofferctl"))
            .args(["policy", "lint"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: cofferctl policy lint refused it:\n{}{}",
            block.place(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn auth_config_examples_parse() {
    for block in yaml_blocks(&["auth-config", "authenticator"]) {
        // Alternatives shown with `# or` are checked one at a time.
        for body in alternatives(&block.body) {
            let text = if block.marker == "authenticator" {
                format!(
                    "authenticators:\n  - issuer: https://kubernetes.default.svc.cluster.local\n    audiences: [coffer]\n{body}"
                )
            } else {
                body
            };
            let config = coffer_broker::auth::config::AuthConfig::parse(&text)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", block.place()));
            assert!(
                !config.authenticators.is_empty(),
                "{}: no authenticator",
                block.place()
            );
        }
    }
}

/// A block showing alternatives separated by `# or` lines, one text each.
fn alternatives(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .split(|l| l.trim() == "# or")
        .map(|alt| format!("{}\n", alt.join("\n")))
        .collect()
}

#[test]
fn vault_config_examples_pass_the_stores_checks() {
    use coffer_broker::store::vault::VaultConfig;
    const ADDRESS: &str = "address: https://vault.example:8200\n";
    const AUTH: &str = "auth: {method: token, tokenFile: /etc/coffer/vault-token}\n";
    const MOUNTS: &str = "mounts: [{prefix: shop, mount: secret}]\n";
    for block in yaml_blocks(&["vault-config", "vault-auth", "vault-mounts"]) {
        let text = match block.marker.as_str() {
            "vault-auth" => format!("{ADDRESS}{MOUNTS}{}", block.body),
            "vault-mounts" => format!("{ADDRESS}{AUTH}{}", block.body),
            _ => block.body.clone(),
        };
        let config = VaultConfig::from_yaml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", block.place()));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", block.place()));
    }
}

// ---- Kubernetes ----

#[test]
fn kubernetes_examples_validate_strictly() {
    let dir = tempfile::tempdir().unwrap();
    for block in yaml_blocks(&["kubernetes", "pod-spec"]) {
        let text = if block.marker == "pod-spec" {
            // A fragment of a pod's spec, with or without its `spec:` line.
            let body = if block.body.starts_with("spec:") {
                block.body.clone()
            } else {
                format!("spec:\n{}", block.body)
            };
            let spec: Value = serde_norway::from_str(&body).unwrap();
            let mut pod = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "example", "namespace": "shop"},
            });
            pod["spec"] = spec["spec"].clone();
            // A fragment shows only what it is about: a pod gets the app
            // container every pod has, and each container the one field
            // every container must have.
            if pod["spec"].get("containers").is_none() {
                pod["spec"]["containers"] = json!([{"name": "app"}]);
            }
            for list in ["containers", "initContainers"] {
                for container in pod["spec"][list].as_array_mut().into_iter().flatten() {
                    if container.get("image").is_none() {
                        container["image"] = json!("registry.example/app:1");
                    }
                }
            }
            pod.to_string()
        } else {
            block.body.clone()
        };
        let file = dir.path().join(format!(
            "{}-{}.yaml",
            block.file.replace('/', "_"),
            block.line
        ));
        std::fs::write(&file, &text).unwrap();
        // Panics with the validator's words and the file, named for the block.
        deploy::kubernetes_validate(&file);
    }
}

#[test]
fn kustomize_patches_apply_to_the_vault_overlay() {
    for block in yaml_blocks(&["kustomize-patch"]) {
        let dir = tempfile::tempdir().unwrap();
        let overlay = deploy::deploy_dir()
            .join("overlays/vault")
            .canonicalize()
            .unwrap();
        let relative = pathdiff(&overlay, dir.path());
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{relative}]\n{}",
                block.body
            ),
        )
        .unwrap();
        let output = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: kubectl kustomize refused it:\n{}",
            block.place(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `to` relative to `from` (kustomize refuses absolute resource paths).
fn pathdiff(to: &Path, from: &Path) -> String {
    let from = from.canonicalize().unwrap();
    let depth = from.components().count() - 1;
    format!(
        "{}{}",
        "../".repeat(depth),
        to.strip_prefix("/").unwrap().display()
    )
}

// ---- the sidecar, for real ----

/// A broker whose `shop/**` holds every secret the examples name, as maps
/// with the keys they select, and a token for them.
struct World {
    broker: BrokerProcess,
    token: String,
    operator: String,
}

const WORLD_POLICY: &str = r#"
rules:
  - name: examples-read-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/**"]
    capabilities: [read, watch]
  - name: operator-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/**"]
    capabilities: [read, write, rotate, rollback, list, status, delete, destroy]
"#;

impl World {
    fn start() -> Self {
        Self {
            broker: BrokerProcess::builder().policy(WORLD_POLICY).start(),
            token: mint(Key::Rsa, "shop", "web"),
            operator: mint(Key::Rsa, "ops", "admin"),
        }
    }

    /// Writes every base path of `paths` (`base#key` selects `key`) as a
    /// map holding every key selected, plus the usual user and password.
    async fn provide(&self, paths: &[String]) {
        use std::collections::{BTreeMap, BTreeSet};
        let mut by_base: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for path in paths {
            let (base, key) = path.split_once('#').unwrap_or((path, "password"));
            by_base
                .entry(base)
                .or_insert_with(|| ["user", "username", "password"].into())
                .insert(key);
        }
        let client = self.broker.client(self.operator.clone()).await;
        for (base, keys) in by_base {
            let data: BTreeMap<String, coffer::SecretBytes> = keys
                .iter()
                .map(|k| {
                    let value = format!("docs-example-{k}");
                    (k.to_string(), coffer::SecretBytes::from(value.as_bytes()))
                })
                .collect();
            client
                .put(coffer::operator::Put::new(
                    base,
                    coffer::SecretData::Map(data),
                ))
                .await
                .unwrap();
        }
    }
}

/// The `path`s a sidecar configuration names (its secrets' and proxies').
fn paths_of(config: &Value) -> Vec<String> {
    ["secrets", "proxies"]
        .iter()
        .filter_map(|list| config[list].as_array())
        .flatten()
        .filter_map(|s| s["path"].as_str().map(str::to_string))
        .collect()
}

/// `coffer-sidecar --config FILE --check-config`.
fn check_config(place: &str, dir: &Path, yaml: &str) {
    let file = dir.join("sidecar.yaml");
    std::fs::write(&file, yaml).unwrap();
    let output = Command::new(binary("coffer-sidecar"))
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{place}: coffer-sidecar --check-config refused it:\n{}{}\n{yaml}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs the sidecar `--once` with `config` pointed at `world` (its broker,
/// token and a fresh tmpfs directory; actions, listeners and the ready file
/// left out, since there is no app here), and asserts every file was written.
async fn run_once(place: &str, world: &World, mut config: Value, dir: &Path) {
    world.provide(&paths_of(&config)).await;
    let out = tempfile::Builder::new()
        .prefix("coffer-docs-")
        .tempdir_in("/dev/shm")
        .unwrap();
    std::fs::write(dir.join("token"), &world.token).unwrap();
    let object = config.as_object_mut().unwrap();
    object.insert("broker".into(), json!(world.broker.endpoint));
    object.insert("tokenFile".into(), json!(dir.join("token")));
    object.insert("outputDir".into(), json!(out.path()));
    for key in [
        "caFile",
        "adminListen",
        "quitListen",
        "readyFile",
        "exitWhenFileExists",
        "action",
        "allowNonTmpfs",
    ] {
        object.remove(key);
    }
    for secret in object["secrets"].as_array_mut().into_iter().flatten() {
        let secret = secret.as_object_mut().unwrap();
        for key in ["action", "uid", "gid"] {
            secret.remove(key);
        }
    }
    let file = dir.join("run.yaml");
    std::fs::write(&file, serde_norway::to_string(&config).unwrap()).unwrap();
    let output = Command::new(binary("coffer-sidecar"))
        .arg("--config")
        .arg(&file)
        .args(["--once", "--once-timeout=20"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{place}: the sidecar's --once run failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for secret in config["secrets"].as_array().into_iter().flatten() {
        let name = secret["file"].as_str().unwrap();
        assert!(
            out.path().join(name).is_file(),
            "{place}: {name} was not written"
        );
    }
}

/// What a `sidecar-secrets` fragment runs under.
const MINIMAL_GLOBAL: &str =
    "broker: https://coffer-broker.coffer.svc:8443\noutputDir: /coffer/secrets\n";

#[tokio::test(flavor = "multi_thread")]
async fn sidecar_examples_pass_check_config_and_a_real_run() {
    let world = World::start();
    let template = blocks()
        .into_iter()
        .find(|b| b.lang == "jinja")
        .expect("docs/sidecar.md shows a template")
        .body;
    for block in yaml_blocks(&[
        "sidecar-config",
        "sidecar-secrets",
        "sidecar-actions",
        "sidecar-proxies",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        // The template a configuration names is the one docs/sidecar.md
        // shows (```jinja), so that example runs too.
        std::fs::write(dir.path().join("app.conf.j2"), &template).unwrap();
        match block.marker.as_str() {
            "sidecar-actions" => {
                for line in block
                    .body
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                {
                    let yaml = format!(
                        "{MINIMAL_GLOBAL}{}\nsecrets:\n  - {{path: shop/db#password, file: password}}\n",
                        line.split(" #").next().unwrap()
                    );
                    check_config(&block.place(), dir.path(), &yaml);
                }
            }
            "sidecar-proxies" => {
                let yaml = format!("{MINIMAL_GLOBAL}{}", block.body);
                check_config(&block.place(), dir.path(), &yaml);
            }
            marker => {
                let yaml = if marker == "sidecar-secrets" {
                    format!("{MINIMAL_GLOBAL}{}", block.body)
                } else {
                    block.body.clone()
                };
                check_config(&block.place(), dir.path(), &yaml);
                let config: Value = serde_norway::from_str(&yaml).unwrap();
                run_once(&block.place(), &world, config, dir.path()).await;
            }
        }
    }
}

// ---- the injector, for real (tests/e2e/injector/common.rs) ----

/// The sidecar configuration a JSONPatch puts in the pod's annotations.
fn injected_config(response: &Value) -> Option<String> {
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str()?)
        .ok()?;
    let patch: Value = serde_json::from_slice(&patch).ok()?;
    patch.as_array()?.iter().find_map(|op| {
        let value = &op["value"];
        if op["path"] == "/metadata/annotations/coffer.dev~1sidecar-config" {
            return value.as_str().map(str::to_string);
        }
        value
            .get("coffer.dev/sidecar-config")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn annotation_examples_are_admitted_and_their_sidecar_writes_every_file() {
    let injector = Injector::start();
    let world = World::start();
    for block in yaml_blocks(&["pod-annotations"]) {
        let example: Value = serde_norway::from_str(&block.body).unwrap();
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {
                "serviceAccountName": "web",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
                "containers": [{"name": "app", "image": "registry.example/web:1"}],
            },
        });
        for part in ["labels", "annotations"] {
            if let Some(map) = example["metadata"].get(part) {
                pod["metadata"][part] = map.clone();
            }
        }
        if let Some(spec) = example.get("spec").and_then(Value::as_object) {
            for (key, value) in spec {
                if key != "containers" {
                    pod["spec"][key] = value.clone();
                }
            }
        }
        let response = injector.create(&pod);
        assert_eq!(
            response["allowed"],
            true,
            "{}: the injector refused it: {}",
            block.place(),
            response["status"]["message"]
        );
        let config = injected_config(&response)
            .unwrap_or_else(|| panic!("{}: no sidecar configuration in {response}", block.place()));
        let dir = tempfile::tempdir().unwrap();
        check_config(&block.place(), dir.path(), &config);
        let config: Value = serde_json::from_str(&config)
            .or_else(|_| serde_norway::from_str(&config))
            .unwrap();
        run_once(&block.place(), &world, config, dir.path()).await;
    }
}

// ---- shell ----

#[tokio::test(flavor = "multi_thread")]
async fn runnable_shell_examples_run_against_a_test_broker() {
    let world = World::start();
    let runnable: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.lang == "sh" && b.marker == "runnable")
        .collect();
    assert!(!runnable.is_empty(), "no ```sh runnable block");
    let bin = binary("cofferctl");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for block in runnable {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), &world.operator).unwrap();
        // Files the examples read.
        std::fs::write(dir.path().join("pw.txt"), "docs-example-pw\n").unwrap();
        std::fs::write(dir.path().join("api.json"), "{\"key\": \"docs-example\"}\n").unwrap();
        std::fs::write(
            dir.path().join("cert.pem"),
            rcgen::generate_simple_self_signed(vec!["example".to_string()])
                .unwrap()
                .cert
                .pem(),
        )
        .unwrap();
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &block.body])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("COFFER_BROKER", &world.broker.endpoint)
            .env("COFFER_TOKEN_FILE", dir.path().join("token"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: the example failed:\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            block.place(),
            block.body,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
