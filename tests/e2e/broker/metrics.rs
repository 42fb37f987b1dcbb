//! Both `/metrics` endpoints after a scripted run (gets, a denied get, a
//! watching sidecar, a rotation): the values, not only the names, and the
//! exposition parsed by Prometheus' own client library (OpenMetrics parser).

use std::{process::Command, time::Duration};

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, eventually, http, mint};
use serde_json::Value;

const CANARY: &str = "canary-metrics-7f3a9c";

/// `(name, labels, value)` of every sample, as Python's
/// `prometheus_client.openmetrics.parser` reads `page`.
fn parse(page: &str) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let python = coffer_tests::deploy::venv_tool("python");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the exposition does not parse: {}\n{page}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_string(),
                s[1].as_object().unwrap().clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`; 0 if none.
fn value(
    samples: &[(String, serde_json::Map<String, Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// The body of the sidecar's `/metrics`.
fn sidecar_metrics(sidecar: &SidecarProcess) -> String {
    let (status, body) = http(&sidecar.admin_addr(), "GET", "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// A broker with `--metrics-listen`, `shop/db` holding `password`, and a
/// sidecar with an admin endpoint that has written it.
async fn broker_and_sidecar(password: &str) -> (BrokerProcess, SidecarProcess) {
    let broker = BrokerProcess::builder()
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start();
    broker.put_map("shop/db", &[("password", password)]).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            global_yaml: "adminListen: 127.0.0.1:0\n",
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(30));
    (broker, sidecar)
}

#[tokio::test(flavor = "multi_thread")]
async fn both_endpoints_count_a_scripted_run() {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (broker, sidecar) = broker_and_sidecar(CANARY).await;

    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    for _ in 0..3 {
        web.get("shop/db").await.unwrap();
    }
    assert!(web.get("other/thing").await.is_err());

    let rotated = format!("{CANARY}-2");
    let version = broker.put_map("shop/db", &[("password", &rotated)]).await;
    assert_eq!(version, 2);
    eventually(Duration::from_secs(30), "the rotation acknowledged", || {
        (std::fs::read_to_string(sidecar.file("password")).ok()? == rotated).then_some(())
    });
    let page = eventually(Duration::from_secs(30), "propagation observed", || {
        let page = broker.metrics();
        let body = page.split("\r\n\r\n").nth(1)?.to_string();
        let samples = parse(&body);
        (value(&samples, "coffer_rollout_propagation_seconds_count", &[]) >= 2.0).then_some(body)
    });
    assert!(
        !page.contains(CANARY),
        "a secret value in the broker's metrics"
    );
    let broker_samples = parse(&page);
    let get = "coffer.v1.SecretBroker/GetSecret";
    assert_eq!(
        value(
            &broker_samples,
            "coffer_grpc_requests_total",
            &[("rpc", get), ("code", "OK")]
        ),
        3.0,
        "{page}"
    );
    assert_eq!(
        value(
            &broker_samples,
            "coffer_grpc_requests_total",
            &[("rpc", get), ("code", "PERMISSION_DENIED")]
        ),
        1.0,
        "{page}"
    );
    assert_eq!(
        value(
            &broker_samples,
            "coffer_grpc_request_duration_seconds_count",
            &[("rpc", get), ("code", "OK")]
        ),
        3.0,
        "{page}"
    );
    assert!(
        value(
            &broker_samples,
            "coffer_grpc_requests_total",
            &[
                ("rpc", "coffer.v1.SecretOperator/PutSecret"),
                ("code", "OK")
            ]
        ) >= 2.0,
        "{page}"
    );
    assert_eq!(
        value(&broker_samples, "coffer_watch_streams_open", &[]),
        1.0,
        "{page}"
    );
    // v1 and v2 were written through the broker; the sidecar applied both.
    assert_eq!(
        value(
            &broker_samples,
            "coffer_rollout_propagation_seconds_count",
            &[]
        ),
        2.0,
        "{page}"
    );
    let start_time = value(&broker_samples, "process_start_time_seconds", &[]);
    assert!(
        (started - 120.0..=started + 60.0).contains(&start_time),
        "start time {start_time} vs {started}"
    );
    assert!(
        value(&broker_samples, "process_open_fds", &[]) >= 3.0,
        "{page}"
    );
    assert!(
        value(&broker_samples, "process_resident_memory_bytes", &[]) > 1e6,
        "{page}"
    );

    let page = sidecar_metrics(&sidecar);
    assert!(
        !page.contains(CANARY),
        "a secret value in the sidecar's metrics"
    );
    let sidecar_samples = parse(&page);
    // Counts only: the probe port is reachable from the pod network, so no
    // sample names the secret or its version.
    assert!(
        sidecar_samples
            .iter()
            .all(|(_, labels, _)| labels.is_empty()),
        "{page}"
    );
    assert_eq!(
        value(&sidecar_samples, "coffer_sidecar_secrets_applied", &[]),
        1.0,
        "{page}"
    );
    assert_eq!(
        value(
            &sidecar_samples,
            "coffer_sidecar_updates_applied_total",
            &[]
        ),
        2.0,
        "{page}"
    );
    assert_eq!(
        value(&sidecar_samples, "coffer_sidecar_files_written_total", &[]),
        2.0,
        "{page}"
    );
    assert_eq!(
        value(&sidecar_samples, "coffer_sidecar_write_failures_total", &[]),
        0.0,
        "{page}"
    );
    assert_eq!(
        value(&sidecar_samples, "coffer_sidecar_reconnects_total", &[]),
        0.0,
        "{page}"
    );
    let last = value(
        &sidecar_samples,
        "coffer_sidecar_last_update_timestamp_seconds",
        &[],
    );
    assert!(
        last >= started - 1.0,
        "last update {last} before the run began {started}"
    );
}

/// The metric names (`coffer_*`, `process_*`) a monitoring file mentions.
fn names_in(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("coffer_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_alerts_name_only_metrics_the_binaries_expose() {
    let (broker, sidecar) = broker_and_sidecar("x").await;
    // One refused token, so the failure family has a sample.
    assert!(
        broker
            .client("not-a-jwt".into())
            .await
            .get("shop/db")
            .await
            .is_err()
    );
    // Every family is declared with `# TYPE`, even one with no sample yet.
    let exposed = format!("{}\n{}", broker.metrics(), sidecar_metrics(&sidecar));
    let families: Vec<&str> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let known = |name: &str| {
        families.iter().any(|f| {
            name == *f
                || ["_total", "_bucket", "_count", "_sum", "_created"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(f))
        })
    };
    let dir = coffer_tests::deploy::deploy_dir().join("monitoring");
    let alerts = std::fs::read_to_string(dir.join("alerts.yaml")).unwrap();
    let rules: serde_norway::Value = serde_norway::from_str(&alerts).unwrap();
    assert!(
        !rules["groups"][0]["rules"]
            .as_sequence()
            .unwrap()
            .is_empty()
    );
    let dashboard = std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).unwrap();
    assert!(!parsed["panels"].as_array().unwrap().is_empty());
    for (file, text) in [
        ("alerts.yaml", &alerts),
        ("grafana-dashboard.json", &dashboard),
    ] {
        let names = names_in(text);
        assert!(names.len() >= 5, "{file}: {names:?}");
        for name in names {
            assert!(known(&name), "{file} names {name}, which no binary exposes");
        }
    }
}
