//! Cost as the watched paths grow, on the shipped broker: P distinct
//! paths, each written once and watched (256 to a stream, the most one
//! stream may name), then one of them rotated again and again. The server
//! CPU per update should not depend on P (the fan-out finds a path's
//! streams by the path); the memory per watched path is the broker
//! process's RSS growth from before the streams opened to after every
//! snapshot arrived, divided by P. A fresh broker for each P.

use std::{path::Path, time::Duration};

use anyhow::Context;
use coffer_proto::v1::{self, secret_broker_client::SecretBrokerClient};
use futures::StreamExt;

use crate::{
    grpc::{authed, connect_target},
    shipped::{Flags, Shipped},
    table::Row,
    target::Target,
    tokens::{Alg, Minter},
};

/// Paths one stream may watch.
const PATHS_PER_STREAM: usize = 256;

/// The rows for each P in `sizes` (ascending), `rounds` rotations each.
pub(crate) async fn rows(
    binary: &Path,
    log_level: &str,
    minter: &Minter,
    sizes: &[usize],
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut base: Option<Duration> = None;
    let token = minter.mint(Alg::Rs256, "app", "app-7d9f8b6c5d-x2x4q")?;
    for &paths in sizes {
        let flags = Flags {
            tls: false,
            audit: false,
        };
        let broker = Shipped::start(binary, flags, log_level, minter).await?;
        let (cpu, rss) = measure(&broker, &token, paths, rounds).await?;
        let base_cpu = *base.get_or_insert(cpu);
        rows.push(Row::Scale {
            label: format!("watched paths {paths}: server CPU per update of one path"),
            value: format!("{:.1} µs", cpu.as_secs_f64() * 1e6),
            base: format!("{:.1} µs at {}", base_cpu.as_secs_f64() * 1e6, sizes[0]),
            ratio: cpu.as_secs_f64() / base_cpu.as_secs_f64().max(1e-12),
        });
        rows.push(Row::Scale {
            label: format!(
                "watched paths {paths}: broker RSS per watched path ({} streams)",
                paths.div_ceil(PATHS_PER_STREAM)
            ),
            value: format!("{:.0} B", rss),
            base: String::new(),
            ratio: f64::NAN,
        });
    }
    Ok(rows)
}

/// (server CPU per update, RSS bytes per path) for `paths` watched paths.
async fn measure(
    broker: &Shipped,
    token: &str,
    paths: usize,
    rounds: usize,
) -> anyhow::Result<(Duration, f64)> {
    let channel = connect_target(broker).await?;
    let names: Vec<String> = (0..paths).map(|i| format!("bench/watched-{i}")).collect();
    // Written 64 at a time.
    let writes = futures::stream::iter(names.iter())
        .map(|name| broker.put_at(&channel, name, 1))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    writes.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = broker.rss();
    let mut streams = Vec::new();
    for chunk in names.chunks(PATHS_PER_STREAM) {
        let request = v1::WatchSecretsRequest {
            paths: chunk.to_vec(),
        };
        let mut stream = SecretBrokerClient::new(channel.clone())
            .watch_secrets(authed(request, token))
            .await
            .context("WatchSecrets refused")?
            .into_inner();
        stream.message().await?.context("no snapshot")?;
        streams.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = broker.rss().saturating_sub(before) as f64 / paths as f64;
    // One path rotated again and again: its stream (the first) sees each.
    let first = names.first().context("no path")?;
    let stream = streams.first_mut().context("no stream")?;
    let cpu_before = broker.cpu()?;
    for round in 0..rounds {
        broker.put_at(&channel, first, round as u64 + 2).await?;
        stream.message().await?.context("the watch ended")?;
    }
    let cpu = broker.cpu()?.saturating_sub(cpu_before);
    Ok((cpu / u32::try_from(rounds.max(1))?, rss))
}
