//! Moving from Vault Agent: the examples of Vault's injector documentation
//! (tests/e2e/injector/vault_examples/, written after
//! hashicorp/vault website/content/docs/platform/k8s/injector/examples.mdx)
//! go through the real `cofferctl migrate`, then the real injector, then
//! the real sidecar `--once` against a real broker, which must write the
//! bytes Vault Agent would (written from consul-template's semantics: no
//! Vault Agent runs here). The refused ConfigMap example is refused by both
//! with the annotation's name.

use std::{collections::BTreeMap, path::Path, process::Command};

use coffer_tests::{BrokerProcess, Key, binary, mint};
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::common::{Injector, apply, refusal};

const POLICY: &str = r#"
rules:
  - name: examples-read
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["web", "database/**", "pki/**", "shop/**"]
    capabilities: [read, watch]
  - name: operator-writes
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["web", "database/**", "pki/**", "shop/**"]
    capabilities: [read, write]
"#;

/// The values in the broker, by broker path.
const SECRETS: &[(&str, &[(&str, &str)])] = &[
    (
        "database/creds/db-app",
        &[("username", "v-app-7"), ("password", "A1b2-C3d4")],
    ),
    ("web", &[("payments_api_key", "pk_live_4242")]),
    ("shop/app", &[("user", "ann"), ("password", "p<&>\"w")]),
    (
        "pki/issue/web",
        &[
            ("tls.crt", "-----CERT-----"),
            ("tls.key", "-----KEY-----"),
            ("ca.crt", "-----CA-----"),
        ],
    ),
];

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/injector/vault_examples")
        .join(name)
        .display()
        .to_string()
}

/// `cofferctl migrate ARGS`: exit code, stdout, stderr.
fn migrate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("cofferctl"))
        .arg("migrate")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pods the workloads of `yaml` would create.
fn pods(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde_json::to_value(serde_norway::Value::deserialize(d).unwrap()).unwrap())
        .filter_map(|doc| {
            let template = match doc["kind"].as_str()? {
                "Pod" => doc.clone(),
                "Deployment" => doc["spec"]["template"].clone(),
                _ => return None,
            };
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": template["metadata"], "spec": template["spec"]});
            pod["metadata"]["name"] = json!("example-0");
            pod["metadata"]["namespace"] = json!("shop");
            Some(pod)
        })
        .collect()
}

struct World {
    broker: BrokerProcess,
    token: String,
}

impl World {
    async fn start() -> Self {
        let broker = BrokerProcess::builder().policy(POLICY).start();
        let client = broker.client(mint(Key::Rsa, "ops", "admin")).await;
        for (path, pairs) in SECRETS {
            let data = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), coffer::SecretBytes::from(v.as_bytes())))
                .collect();
            client
                .put(coffer::operator::Put::new(
                    *path,
                    coffer::SecretData::Map(data),
                ))
                .await
                .unwrap();
        }
        Self {
            broker,
            token: mint(Key::Rsa, "shop", "web"),
        }
    }

    /// Runs the sidecar `--once` with the injected configuration, pointed at
    /// this broker and a fresh tmpfs directory; returns every file written.
    fn render(&self, config: &str) -> BTreeMap<String, Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::Builder::new()
            .prefix("coffer-vault-k8s-")
            .tempdir_in("/dev/shm")
            .unwrap();
        let mut config: Value = serde_norway::from_str(config).unwrap();
        std::fs::write(dir.path().join("token"), &self.token).unwrap();
        let object = config.as_object_mut().unwrap();
        object.insert("broker".into(), json!(self.broker.endpoint));
        object.insert("tokenFile".into(), json!(dir.path().join("token")));
        object.insert("outputDir".into(), json!(out.path()));
        object.remove("caFile");
        object.remove("adminListen");
        // No app to signal here.
        for secret in object["secrets"].as_array_mut().unwrap() {
            secret.as_object_mut().unwrap().remove("action");
        }
        let file = dir.path().join("sidecar.yaml");
        std::fs::write(&file, serde_norway::to_string(&config).unwrap()).unwrap();
        let output = Command::new(binary("coffer-sidecar"))
            .arg("--config")
            .arg(&file)
            .args(["--once", "--once-timeout=20"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().to_string_lossy().starts_with(".."))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }
}

/// The sidecar configuration of an admitted pod.
fn config_of(pod: &Value) -> String {
    pod["metadata"]["annotations"]["coffer.dev/sidecar-config"]
        .as_str()
        .unwrap()
        .to_string()
}

fn mount_paths(pod: &Value, container: &str) -> Vec<String> {
    let c = pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap();
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["name"] == "coffer-secrets")
        .map(|m| m["mountPath"].as_str().unwrap().to_string())
        .collect()
}

fn text(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, &str> {
    files
        .iter()
        .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn vaults_documented_examples_migrate_are_admitted_and_write_vault_agents_bytes() {
    let injector = Injector::start();
    let world = World::start().await;
    let db = "postgres://v-app-7:A1b2-C3d4@postgres:5432/appdb?sslmode=disable\n";
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("deployment.yaml", &[("db-creds", db)]),
        ("patch.yaml", &[("db-creds", db)]),
        (
            "env.yaml",
            &[("config", "export api_key=\"pk_live_4242\"\n")],
        ),
        (
            "approle.yaml",
            &[(
                "db-creds",
                "postgres://v-app-7:A1b2-C3d4@postgres.postgres.svc:5432/wizard?sslmode=disable\n",
            )],
        ),
    ];
    for (file, expected) in cases {
        let (code, yaml, report) = migrate(&["--check", &example(file)]);
        assert_eq!(code, 0, "{file}: {report}");
        let (code, yaml_out, _) = migrate(&[&example(file)]);
        assert_eq!(code, 0, "{file}");
        assert!(yaml.is_empty(), "--check prints no YAML");
        let pods = pods(&yaml_out);
        assert_eq!(pods.len(), 1, "{file}");
        let pod = &pods[0];
        assert_eq!(
            pod["metadata"]["labels"]["coffer.dev/inject"], "true",
            "{file}"
        );
        let response = injector.create(pod);
        assert_eq!(response["allowed"], true, "{file}: {response}");
        let admitted = apply(pod.clone(), &response);
        let app = admitted["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            mount_paths(&admitted, &app),
            ["/vault/secrets"],
            "{file}: the app reads /vault/secrets"
        );
        let files = world.render(&config_of(&admitted));
        let want: BTreeMap<&str, &str> = expected.iter().copied().collect();
        assert_eq!(text(&files), want, "{file}");

        // The unmigrated pod, straight to the injector, gets the same
        // configuration, and a warning for each ignored annotation.
        let mut original = pods_of_file(file);
        original["metadata"]["labels"]["coffer.dev/inject"] = json!("true");
        let response = injector.create(&original);
        assert_eq!(response["allowed"], true, "{file}: {response}");
        assert_eq!(
            config_of(&apply(original, &response)),
            config_of(&admitted),
            "{file}"
        );
        let warnings = response["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| w
                .as_str()
                .unwrap()
                .starts_with("vault.hashicorp.com/role is ignored: ")),
            "{file}: {warnings:?}"
        );
    }
}

fn pods_of_file(file: &str) -> Value {
    pods(&std::fs::read_to_string(example(file)).unwrap()).remove(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_supported_template_form_writes_consul_templates_bytes() {
    let injector = Injector::start();
    let world = World::start().await;
    let (code, yaml, report) = migrate(&[&example("features.yaml")]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("0 refused"), "{report}");
    let pod = pods(&yaml).remove(0);
    let response = injector.create(&pod);
    let admitted = apply(pod, &response);
    assert_eq!(mount_paths(&admitted, "app"), ["/etc/secrets"]);
    assert!(
        mount_paths(&admitted, "metrics").is_empty(),
        "agent-inject-containers: app only"
    );
    assert_eq!(admitted["spec"]["shareProcessNamespace"], true);
    let config: Value = serde_norway::from_str(&config_of(&admitted)).unwrap();
    let env = config["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["file"] == "env")
        .unwrap();
    assert_eq!(
        env["action"],
        json!({"signal": "HUP", "processName": "app"})
    );
    let files = world.render(&config_of(&admitted));
    // consul-template: toJSONPretty is json.MarshalIndent with "  ", Go's
    // HTML escapes; range goes in key order; base64Encode is StdEncoding.
    let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ann:p<&>\"w");
    let want = BTreeMap::from([
        (
            "app.json",
            "{\n  \"password\": \"p\\u003c\\u0026\\u003e\\\"w\",\n  \"user\": \"ann\"\n}\n"
                .to_string(),
        ),
        (
            "env",
            "\nexport password=\"p\\u003c\\u0026\\u003e\\\"w\"\nexport user=\"ann\"\n".to_string(),
        ),
        ("basic", format!("Authorization: Basic {basic}\n\n")),
        ("cert", "-----CERT-----\n-----CA-----\n".to_string()),
        // vault-k8s's default template (map) of a non-KV v2 secret.
        (
            "defaults",
            "password: A1b2-C3d4\nusername: v-app-7\n".to_string(),
        ),
    ]);
    let want: BTreeMap<&str, &str> = want.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(text(&files), want);
}

#[test]
fn the_configmap_example_is_refused_by_migrate_check_and_by_the_injector() {
    let (code, _, report) = migrate(&["--check", &example("configmap.yaml")]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("refused    vault.hashicorp.com/agent-configmap: "),
        "{report}"
    );
    let injector = Injector::start();
    let mut pod = pods_of_file("configmap.yaml");
    pod["metadata"]["labels"]["coffer.dev/inject"] = json!("true");
    let message = refusal(&injector.create(&pod));
    assert!(
        message.contains("vault.hashicorp.com/agent-configmap is refused: "),
        "{message}"
    );
    assert!(message.contains("coffer.dev/template-<name>"), "{message}");
}

/// Prints what translating at admission costs: reviews of the unmigrated
/// features pod against reviews of its `cofferctl migrate` output, in the
/// same run (a figure, not a timed assertion).
#[test]
fn admission_of_a_vault_k8s_pod_costs_about_what_its_migrated_pod_costs() {
    let injector = Injector::start();
    let (_, yaml, _) = migrate(&[&example("features.yaml")]);
    let migrated = pods(&yaml).remove(0);
    let mut original = pods_of_file("features.yaml");
    original["metadata"]["labels"] = json!({"coffer.dev/inject": "true"});
    let mut took = [std::time::Duration::ZERO; 2];
    // Interleaved after a warm-up, so both see the same machine.
    for round in 0..110 {
        for (i, pod) in [&migrated, &original].into_iter().enumerate() {
            let start = std::time::Instant::now();
            assert_eq!(injector.create(pod)["allowed"], true);
            if round >= 10 {
                took[i] += start.elapsed();
            }
        }
    }
    let (coffer, vault) = (took[0] / 100, took[1] / 100);
    eprintln!(
        "admission of the features pod (5 files, 5 templates): vault-k8s annotations {vault:?}, \
         migrated coffer.dev annotations {coffer:?} (ratio {:.2})",
        vault.as_secs_f64() / coffer.as_secs_f64()
    );
}
