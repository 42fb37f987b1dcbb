//! The cached `GetSecret` load: C connections x N in flight per connection,
//! the same token on every request, each side in turn.

use std::time::{Duration, Instant};

use coffer_proto::v1::secret_broker_client::SecretBrokerClient;
use tonic::Status;

use crate::{
    grpc::{connect_target, timed_get},
    stats::{Figures, figures},
    table::Row,
    target::Target,
};

/// Pairs of runs per Get load (one run of each side per pair).
const GET_PAIRS: usize = 3;

/// The broker and the bare server, each with the token it is sent.
pub(crate) struct Sides<'a> {
    pub(crate) broker: &'a dyn Target,
    pub(crate) bare: &'a dyn Target,
    pub(crate) token: &'a str,
    /// What the row's label says after the load's shape.
    pub(crate) what: &'a str,
}

/// Both sides under `conns` x `in_flight` for `run_for` each: warm both
/// (connections, caches), then measure [`GET_PAIRS`] pairs of runs, each
/// pair in the other order (bare, coffer, coffer, bare, ...), and keep the
/// median of each figure: drift and noise hit both sides alike.
pub(crate) async fn compare(
    sides: &Sides<'_>,
    conns: usize,
    in_flight: usize,
    run_for: Duration,
) -> anyhow::Result<Row> {
    let warm = run_for / 4;
    let token = sides.token;
    get_load(sides.bare, token, conns, in_flight, warm).await?;
    get_load(sides.broker, token, conns, in_flight, warm).await?;
    let (mut bares, mut coffers) = (Vec::new(), Vec::new());
    for pair in 0..GET_PAIRS {
        let broker_first = pair % 2 == 1;
        for broker in [broker_first, !broker_first] {
            let target = if broker { sides.broker } else { sides.bare };
            let figures = get_load(target, token, conns, in_flight, run_for).await?;
            if broker {
                coffers.push(figures);
            } else {
                bares.push(figures);
            }
        }
    }
    Ok(Row::Get {
        label: format!("{conns} x {in_flight}, {}", sides.what),
        coffer: Figures::median(&coffers),
        bare: Figures::median(&bares),
    })
}

/// The Get load: `conns` connections, `in_flight` requests on each.
pub(crate) async fn get_load(
    server: &dyn Target,
    token: &str,
    conns: usize,
    in_flight: usize,
    run_for: Duration,
) -> anyhow::Result<Figures> {
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(connect_target(server).await?);
    }
    let cpu_before = server.cpu()?;
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for channel in &channels {
        for _ in 0..in_flight {
            let mut client = SecretBrokerClient::new(channel.clone());
            let token = token.to_string();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    latencies.push(timed_get(&mut client, &token).await?);
                }
                Ok::<_, Status>(latencies)
            }));
        }
    }
    gather(server, tasks, start, cpu_before).await
}

/// Every load task's latencies, and the figures of the run begun at `start`.
async fn gather(
    server: &dyn Target,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, Status>>>,
    start: Instant,
    cpu_before: Duration,
) -> anyhow::Result<Figures> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let cpu = server.cpu()?.saturating_sub(cpu_before);
    Ok(figures(latencies, elapsed, cpu))
}
