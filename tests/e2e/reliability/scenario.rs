//! What the fault scenarios share: the CI or full form, the broker on the
//! cluster the way the docs recommend, and the writer that counts what was
//! acknowledged.

use std::time::{Duration, Instant};

use coffer::{Client, Code, SecretBytes, SecretData, operator::Put};
use coffer_tests::{BrokerProcess, Key, fault::FaultProxy, mint, openbao_cluster::RaftCluster};

/// The full form (`COFFER_CHAOS_FULL=1`, run by `scripts/chaos`): more
/// watchers, longer outages. Otherwise the short CI form.
pub fn full() -> bool {
    std::env::var("COFFER_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `ci` in the CI form, `full` in the full form.
pub fn sized<T>(ci: T, full_form: T) -> T {
    if full() { full_form } else { ci }
}

/// A broker on `cluster` through `proxy` following the active node (what a
/// `vault-active` Service gives), with `extra` Vault YAML.
pub fn broker(cluster: &RaftCluster, proxy: &FaultProxy, extra: &str) -> BrokerProcess {
    BrokerProcess::builder()
        .args(cluster.vault_args(&proxy.address(), extra))
        .start()
}

/// The operator's client.
pub async fn admin(broker: &BrokerProcess) -> Client {
    broker.client(mint(Key::Rsa, "ops", "admin")).await
}

/// The outcome of one write through the broker.
pub struct Write {
    /// The version, or the code it failed with.
    pub result: Result<u64, Option<Code>>,
    /// How long the call took.
    pub took: Duration,
}

/// Writes `password=value` at `path` through the broker. A call that does
/// not answer in 60 s fails the test: a hang is what must never happen.
pub async fn write(admin: &Client, path: &str, value: &str) -> Write {
    let data = SecretData::Map(
        [("password".to_string(), SecretBytes::from(value.as_bytes()))]
            .into_iter()
            .collect(),
    );
    let begin = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        admin.put(Put::new(path, data).content_type("text/plain")),
    )
    .await
    .expect("a write through the broker hung for 60 s");
    Write {
        result: result.map_err(|e| e.code()),
        took: begin.elapsed(),
    }
}

/// Version `version` of `secret/<path>`'s `password` as the cluster's
/// active node holds it.
pub fn held(cluster: &RaftCluster, path: &str, version: u64) -> Option<String> {
    let (v, data) = cluster.read_at(cluster.leader(), path, Some(version))?;
    (v == version).then(|| data["password"].as_str().unwrap_or_default().to_string())
}
