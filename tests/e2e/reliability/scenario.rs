//! What the fault scenarios share: the CI or full form, the broker on the
//! cluster the two ways the docs recommend (and the proxies to cut), and the writer that counts what was
//! acknowledged.

use std::time::{Duration, Instant};

use coffer::{Client, Code, SecretBytes, SecretData, operator::Put};
use coffer_tests::{
    BrokerProcess, Key,
    fault::{FaultProxy, Target},
    mint,
    openbao_cluster::RaftCluster,
};

/// The full form (`COFFER_CHAOS_FULL=1`, run by `scripts/chaos`): more
/// watchers, longer outages. Otherwise the short CI form.
pub fn full() -> bool {
    std::env::var("COFFER_CHAOS_FULL").is_ok_and(|v| v == "1")
}

/// `ci` in the CI form, `full` in the full form.
pub fn sized<T>(ci: T, full_form: T) -> T {
    if full() { full_form } else { ci }
}

/// How the broker reaches the cluster: the two ways docs/vault.md
/// recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `address:` of a proxy that follows the active node, as the
    /// `vault-active` Service of a Helm install does.
    ActiveService,
    /// `addresses:` naming every node, each behind a proxy of its own
    /// (forwarding to that node), so a partition can cut them all.
    Addresses,
}

impl Route {
    /// Both, the Service first.
    pub const BOTH: [Route; 2] = [Route::ActiveService, Route::Addresses];

    /// The name in a figure line.
    pub fn name(self) -> &'static str {
        match self {
            Route::ActiveService => "active_service",
            Route::Addresses => "addresses",
        }
    }
}

/// The network between the broker and the cluster: the proxies of a
/// [`Route`], to cut and heal together.
pub struct Network {
    proxies: Vec<FaultProxy>,
    route: Route,
}

impl Network {
    /// The proxies `route` needs in front of `cluster`.
    pub fn new(cluster: &RaftCluster, route: Route) -> Self {
        let proxies = match route {
            Route::ActiveService => vec![FaultProxy::follow_active(cluster)],
            Route::Addresses => cluster
                .sockets()
                .into_iter()
                .map(|node| FaultProxy::start(Target::Fixed(node)))
                .collect(),
        };
        Self { proxies, route }
    }

    /// The Vault YAML line naming where the broker goes.
    pub fn address_yaml(&self) -> String {
        match self.route {
            Route::ActiveService => format!("address: {}\n", self.proxies[0].address()),
            Route::Addresses => {
                let all: Vec<String> = self.proxies.iter().map(FaultProxy::address).collect();
                format!("addresses: [{}]\n", all.join(", "))
            }
        }
    }

    /// A partition without RST between the broker and every node.
    pub fn blackhole(&self) {
        self.proxies.iter().for_each(FaultProxy::blackhole);
    }

    /// Ends [`blackhole`](Self::blackhole).
    pub fn heal(&self) {
        self.proxies.iter().for_each(FaultProxy::heal);
    }
}

/// A broker on `cluster` through `network`, with `extra` Vault YAML.
pub fn broker(cluster: &RaftCluster, network: &Network, extra: &str) -> BrokerProcess {
    let extra = format!("{}{extra}", network.address_yaml());
    BrokerProcess::builder()
        .args(cluster.vault_args("", &extra))
        .args(["--metrics-listen", "127.0.0.1:0"])
        .start()
}

/// A counter of the broker's `/metrics` page (0 while it has no sample).
pub fn counter(broker: &BrokerProcess, series: &str) -> f64 {
    broker
        .metrics()
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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
