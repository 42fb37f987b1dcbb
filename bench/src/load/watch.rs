//! Watch fan-out: N watchers over M connections on each side and several
//! rotations; both sides' watchers open at once and their rotations
//! alternating when the descriptors allow. Memory per watch stream is the
//! server process's RSS growth, in a fresh server process per side.

use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_proto::v1::{self, secret_broker_client::SecretBrokerClient};
use tonic::Status;

use crate::{
    child::{ServerProcess, Side},
    fixture::PATH,
    grpc::{authed, connect},
    procfs::fd_limit,
    serve::ServerOptions,
    stats::{WatchFigures, median, quantile},
    table::Row,
};

/// Descriptors each process keeps beside its connections.
const SPARE_FDS: usize = 256;

/// Both sides' `watchers` streams over `conns` connections and `rounds`
/// rotations; skipped when the descriptor limit cannot hold one side.
pub(crate) async fn compare(
    server: &ServerProcess,
    options: &ServerOptions,
    watchers: usize,
    conns: usize,
    rounds: usize,
) -> anyhow::Result<Row> {
    let limit = fd_limit();
    // Each connection costs one descriptor on each side (the client's
    // end here, the server's in the server process).
    let conns = conns.clamp(1, watchers.max(1));
    if conns + SPARE_FDS > limit {
        return Ok(Row::Skipped(format!(
            "watch {watchers} over {conns} connections: needs {} descriptors on each side, the limit is {limit}",
            conns + SPARE_FDS
        )));
    }
    // Both sides' watchers open at once when the descriptors allow, so
    // their rotations can alternate.
    let together = 2 * conns + SPARE_FDS <= limit;
    let (mut coffer, mut bare) = watch_pair(server, watchers, conns, rounds, together).await?;
    // Memory in a fresh server process per side: in one process the
    // side measured second would reuse the heap the first one grew.
    coffer.rss_per_stream = memory_probe(options, Side::Broker, watchers, conns).await?;
    bare.rss_per_stream = memory_probe(options, Side::Bare, watchers, conns).await?;
    Ok(Row::Watch {
        label: format!("{watchers} over {conns}"),
        coffer,
        bare,
        together,
    })
}

/// The broker's and the bare server's `watchers` streams over `conns`
/// connections each, and `rounds` rotations of each side. With `together`,
/// both sides' streams are open at once and each round rotates both, in
/// turn, first one side then the other, so drift and noise hit both alike;
/// otherwise (too few descriptors for both at once) the sides take turns,
/// broker, bare, bare, broker, half the rounds each turn.
/// Each figure is the median over the rounds; the server CPU is the whole
/// fan-out's, per update sent.
async fn watch_pair(
    server: &ServerProcess,
    watchers: usize,
    conns: usize,
    rounds: usize,
    together: bool,
) -> anyhow::Result<(WatchFigures, WatchFigures)> {
    let mut broker = Rotations::default();
    let mut bare = Rotations::default();
    if together {
        let mut broker_side = Watchers::open(server, Side::Broker, watchers, conns, rounds).await?;
        let mut bare_side = Watchers::open(server, Side::Bare, watchers, conns, rounds).await?;
        for round in 0..rounds {
            let version = round as u64 + 2;
            if round % 2 == 0 {
                broker.push(broker_side.rotate(server, version).await?);
                bare.push(bare_side.rotate(server, version).await?);
            } else {
                bare.push(bare_side.rotate(server, version).await?);
                broker.push(broker_side.rotate(server, version).await?);
            }
        }
        broker_side.close().await?;
        bare_side.close().await?;
    } else {
        // One side at a time, in the order broker, bare, bare, broker, each
        // run half the rounds.
        let half = rounds.div_ceil(2);
        for side in [Side::Broker, Side::Bare, Side::Bare, Side::Broker] {
            let figures = match side {
                Side::Broker => &mut broker,
                Side::Bare => &mut bare,
            };
            // Versions go on rising across the side's runs.
            let first = figures.rounds.len() as u64 + 2;
            let mut open = Watchers::open(server, side, watchers, conns, half).await?;
            for round in 0..half {
                figures.push(open.rotate(server, first + round as u64).await?);
            }
            open.close().await?;
        }
    }
    Ok((broker.figures(watchers), bare.figures(watchers)))
}

/// One side's rounds: each round's first, median, p99 and last receiver,
/// and the server CPU of all rounds.
#[derive(Default)]
struct Rotations {
    rounds: Vec<[Duration; 4]>,
    cpu: Duration,
}

impl Rotations {
    fn push(&mut self, (receivers, cpu): ([Duration; 4], Duration)) {
        self.rounds.push(receivers);
        self.cpu += cpu;
    }

    fn figures(&self, watchers: usize) -> WatchFigures {
        let of = |i: usize| median(self.rounds.iter().map(|r| r[i]).collect());
        let updates = watchers.saturating_mul(self.rounds.len()).max(1);
        WatchFigures {
            first: of(0),
            median: of(1),
            p99: of(2),
            last: of(3),
            cpu_per_update: self.cpu / u32::try_from(updates).unwrap_or(u32::MAX),
            rss_per_stream: 0.0,
        }
    }
}

/// One side's open watch streams, each waiting for its next update.
struct Watchers {
    side: Side,
    watchers: usize,
    /// When each receiver got an update.
    receipts: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    tasks: Vec<tokio::task::JoinHandle<Result<tonic::Streaming<v1::WatchSecretsResponse>, Status>>>,
    /// The server process's RSS growth from after the connections opened to
    /// after every snapshot arrived, per stream.
    rss_per_stream: f64,
}

impl Watchers {
    /// Opens `watchers` streams over `conns` connections to `side`, each to
    /// receive its snapshot then `rounds` updates, and waits for every
    /// snapshot.
    async fn open(
        server: &ServerProcess,
        side: Side,
        watchers: usize,
        conns: usize,
        rounds: usize,
    ) -> anyhow::Result<Self> {
        let conns = conns.clamp(1, watchers.max(1));
        let mut channels = Vec::with_capacity(conns);
        for _ in 0..conns {
            channels.push(connect(server.url(side)).await?);
        }
        // Let the server settle its accepted connections before reading memory.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_before = server.rss()?;
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
        let (receipts_tx, receipts) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut tasks = Vec::with_capacity(watchers);
        for i in 0..watchers {
            let mut client = SecretBrokerClient::new(channels[i % conns].clone());
            let request = authed(
                v1::WatchSecretsRequest {
                    paths: vec![PATH.into()],
                },
                &server.token,
            );
            let ready = ready_tx.clone();
            let receipts = receipts_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = client.watch_secrets(request).await?.into_inner();
                stream
                    .message()
                    .await?
                    .ok_or_else(|| Status::internal("no snapshot"))?;
                let _ = ready.send(()).await;
                for _ in 0..rounds {
                    let update = stream
                        .message()
                        .await?
                        .ok_or_else(|| Status::internal("no update"))?;
                    let _ = receipts.send(Instant::now());
                    drop(update);
                }
                // Keep the stream open until every receiver has its last
                // update, so closing streams do not compete with the fan-out.
                Ok::<_, Status>(stream)
            }));
        }
        drop((ready_tx, receipts_tx));
        for _ in 0..watchers {
            if ready_rx.recv().await.is_none() {
                break;
            }
        }
        // Let the server settle its per-stream work before reading memory.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_after = server.rss()?;
        Ok(Self {
            side,
            watchers,
            receipts,
            tasks,
            rss_per_stream: rss_after.saturating_sub(rss_before) as f64 / watchers.max(1) as f64,
        })
    }

    /// Rotates this side to `version` and waits for every receiver: the
    /// first, median, p99 and last receiver from the rotation, and the
    /// server CPU it took.
    async fn rotate(
        &mut self,
        server: &ServerProcess,
        version: u64,
    ) -> anyhow::Result<([Duration; 4], Duration)> {
        let cpu_before = server.cpu()?;
        let start = Instant::now();
        match self.side {
            Side::Broker => server.write(version)?,
            Side::Bare => server.broadcast(version)?,
        }
        let mut times = Vec::with_capacity(self.watchers);
        for _ in 0..self.watchers {
            let at = self
                .receipts
                .recv()
                .await
                .context("a watcher ended before its update")?;
            times.push(at.saturating_duration_since(start));
        }
        let cpu = server.cpu()?.saturating_sub(cpu_before);
        times.sort_unstable();
        // Let the connections drain before the next rotation.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((
            [
                times.first().copied().unwrap_or_default(),
                quantile(&times, 0.5),
                quantile(&times, 0.99),
                times.last().copied().unwrap_or_default(),
            ],
            cpu,
        ))
    }

    /// Waits for every stream's last update, then closes them all.
    async fn close(self) -> anyhow::Result<()> {
        let mut streams = Vec::with_capacity(self.watchers);
        for task in self.tasks {
            streams.push(task.await??);
        }
        drop(streams);
        Ok(())
    }
}

/// Opens `watchers` streams over `conns` connections on one side of a fresh
/// server process and returns that process's RSS growth per stream.
async fn memory_probe(
    options: &ServerOptions,
    side: Side,
    watchers: usize,
    conns: usize,
) -> anyhow::Result<f64> {
    let server = ServerProcess::spawn(options)?;
    let open = Watchers::open(&server, side, watchers, conns, 0).await?;
    let rss_per_stream = open.rss_per_stream;
    open.close().await?;
    Ok(rss_per_stream)
}
