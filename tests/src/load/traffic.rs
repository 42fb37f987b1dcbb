//! The steady traffic beside the watches: a [`Writer`] putting a new
//! version of one path at a fixed pace as the operator, entering each
//! acknowledged version in the [`Ledger`]; and a [`GetLoad`] of reads by the
//! fleet's pods, each checked against the versions acknowledged before it
//! was sent.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use coffer::{Client, SecretData, TokenSource, operator::Put};
use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinHandle, time::MissedTickBehavior};

use super::{Ledger, Pod, SHARED};
use crate::tokens::{Key, mint};

/// Latencies a [`GetLoad`] keeps (10 minutes at 200 a second fit).
const MAX_LATENCIES: usize = 200_000;
/// Reads a [`GetLoad`] has in flight at most; beyond, a tick is shed.
const MAX_IN_FLIGHT: usize = 64;

/// Writes `path` every period until stopped.
pub struct Writer {
    task: JoinHandle<WriterFigures>,
    stop: watch::Sender<bool>,
}

/// What a [`Writer`] did.
#[derive(Debug, Clone, Default)]
pub struct WriterFigures {
    /// Writes the broker acknowledged.
    pub acked: u64,
    /// Writes that failed, by gRPC code.
    pub failed: BTreeMap<String, u64>,
    /// The longest time between two acknowledged writes.
    pub longest_gap: Duration,
}

impl Writer {
    /// Starts writing `path` through `endpoint` as `ops/admin`, one version
    /// every `every` (the value `n=<sequence>`, nothing secret), each call
    /// bounded by 5 s.
    pub async fn start(endpoint: &str, path: &str, every: Duration, ledger: Arc<Ledger>) -> Self {
        let client = Client::builder(endpoint)
            .token(TokenSource::from_static(mint(Key::Rsa, "ops", "admin")))
            .timeout(Duration::from_secs(5))
            .connect_lazy()
            .await
            .unwrap();
        let (stop, mut stopped) = watch::channel(false);
        let path = path.to_string();
        let task = tokio::spawn(async move {
            let mut figures = WriterFigures::default();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut last_ack = Instant::now();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                n += 1;
                let put = Put::new(
                    &path,
                    SecretData::Bytes(format!("n={n}").into_bytes().into()),
                )
                .content_type("text/plain");
                match client.put(put).await {
                    Ok(version) => {
                        ledger.acked(&path, version);
                        figures.acked += 1;
                        figures.longest_gap = figures.longest_gap.max(last_ack.elapsed());
                        last_ack = Instant::now();
                    }
                    Err(error) => {
                        let code = error
                            .code()
                            .map_or_else(|| "transport".to_string(), |c| format!("{c:?}"));
                        *figures.failed.entry(code).or_default() += 1;
                    }
                }
            }
            figures
        });
        Self { task, stop }
    }

    /// Stops writing; returns what was done.
    pub async fn stop(self) -> WriterFigures {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Reads by the fleet's pods at a steady rate until stopped.
pub struct GetLoad {
    task: JoinHandle<()>,
    state: Arc<Mutex<GetFigures>>,
    stop: watch::Sender<bool>,
}

/// What a [`GetLoad`] saw.
#[derive(Debug, Clone, Default)]
pub struct GetFigures {
    pub ok: u64,
    /// Reads that failed, by gRPC code.
    pub failed: BTreeMap<String, u64>,
    /// Reads answered with a version older than one acknowledged before
    /// the read was sent.
    pub stale: u64,
    /// Ticks skipped because [`MAX_IN_FLIGHT`] reads were still out.
    pub shed: u64,
    latencies: Vec<Duration>,
}

impl GetLoad {
    /// `per_second` reads, pod after pod of `pods`, each of its own secret
    /// and of [`SHARED`] in turn, over `connections` connections spread on
    /// `endpoints`.
    pub async fn start(
        endpoints: &[String],
        pods: &[Pod],
        connections: usize,
        per_second: u32,
        ledger: Arc<Ledger>,
    ) -> Self {
        let mut clients = Vec::new();
        for c in 0..connections.max(1) {
            clients.push(
                Client::builder(endpoints[c % endpoints.len()].clone())
                    .token(TokenSource::from_static(String::new()))
                    .timeout(Duration::from_secs(5))
                    .connect_lazy()
                    .await
                    .unwrap(),
            );
        }
        let pods: Vec<Pod> = pods.to_vec();
        let state = Arc::new(Mutex::new(GetFigures::default()));
        let (stop, mut stopped) = watch::channel(false);
        let figures = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for n in 0usize.. {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    figures.lock().shed += 1;
                    continue;
                };
                let pod = &pods[(n / 2) % pods.len()];
                let path = if n % 2 == 0 {
                    pod.secret.clone()
                } else {
                    SHARED.to_string()
                };
                let client = clients[n % clients.len()]
                    .with_token(TokenSource::from_static(pod.token.clone()));
                let (figures, ledger) = (Arc::clone(&figures), Arc::clone(&ledger));
                tokio::spawn(async move {
                    let acknowledged = ledger.last(&path).unwrap_or(0);
                    let sent = Instant::now();
                    let result = client.get(&path).await;
                    let took = sent.elapsed();
                    let mut figures = figures.lock();
                    match result {
                        Ok(secret) => {
                            figures.ok += 1;
                            figures.stale += u64::from(secret.version() < acknowledged);
                            if figures.latencies.len() < MAX_LATENCIES {
                                figures.latencies.push(took);
                            }
                        }
                        Err(error) => {
                            let code = error
                                .code()
                                .map_or_else(|| "transport".to_string(), |c| format!("{c:?}"));
                            *figures.failed.entry(code).or_default() += 1;
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { task, state, stop }
    }

    /// Stops reading (waiting for the reads in flight); returns what it saw.
    pub async fn stop(self) -> GetFigures {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
        // Let the reads in flight finish (each is bounded by 5 s).
        for _ in 0..300 {
            if Arc::strong_count(&self.state) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.state.lock().clone()
    }
}

impl GetFigures {
    /// The `q` quantile of the read latencies (0 without reads).
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = ((sorted.len() as f64 - 1.0) * q).round().max(0.0) as usize;
        sorted.get(at).copied().unwrap_or_default()
    }

    /// Failed reads in all.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// Writes a first version of each of `paths` through `endpoint` as
/// `ops/admin`, entering each in `ledger`.
pub async fn seed(endpoint: &str, paths: &[String], ledger: &Ledger) {
    let client = Client::builder(endpoint)
        .token(TokenSource::from_static(mint(Key::Rsa, "ops", "admin")))
        .connect()
        .await
        .unwrap();
    for path in paths {
        let put =
            Put::new(path, SecretData::Bytes(b"n=0".to_vec().into())).content_type("text/plain");
        let version = client
            .put(put)
            .await
            .unwrap_or_else(|e| panic!("seeding {path}: {e}"));
        ledger.acked(path, version);
    }
}
