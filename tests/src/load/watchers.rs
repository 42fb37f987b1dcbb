//! Many pods' watches over a bounded number of connections: each pod's
//! stream presents its own token on a connection it shares (100 watchers a
//! connection for 10,000 over 100, as the bench does), and one task per pod
//! logs every version it is sent into its [`ReceiverLog`]s. Watches
//! reconnect for as long as the load runs, through the SDK's reconnecting
//! [`coffer::WatchStream`] ([`Mode::Sdk`]) or the SDK's one-connection
//! stream with a reconnect loop of ours that hides nothing the broker sends
//! ([`Mode::Raw`]: a repeated or older version reaches the ledger).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use coffer::{Client, TokenSource, WatchEventKind};
use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinHandle};

use super::{Pod, ReceiverLog};

/// How a simulated pod watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Client::watch`: what a service using the SDK gets (reconnects by
    /// itself, yields only newer versions).
    Sdk,
    /// `Client::watch_connection` and our own reconnect loop: every message
    /// the broker sends is logged as it is.
    Raw,
}

/// Open watches of many pods; [`WatchLoad::close`] ends them and returns
/// what each receiver saw.
pub struct WatchLoad {
    tasks: Vec<JoinHandle<Vec<ReceiverLog>>>,
    progress: Arc<Progress>,
    stop: watch::Sender<bool>,
}

/// What the test reads while the load runs.
struct Progress {
    /// Per receiver (pod, path): the path and the newest version seen (0: none).
    paths: Vec<Arc<str>>,
    last: Vec<AtomicU64>,
    /// Failures to open or keep a stream, by gRPC code.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Streams (re)opened after the first.
    reconnects: AtomicU64,
    /// Receivers whose stream is up now.
    live: AtomicUsize,
}

impl WatchLoad {
    /// Each pod of `pods` watches `paths(pod)` on connection `i % connections`
    /// (connection `c` to `endpoints[c % endpoints.len()]`), all started at
    /// once. Returns at once: see [`Self::wait_snapshots`].
    pub async fn open(
        endpoints: &[String],
        pods: &[Pod],
        paths: impl Fn(&Pod) -> Vec<String>,
        connections: usize,
        mode: Mode,
    ) -> Self {
        let connections = connections.clamp(1, pods.len().max(1));
        let mut clients = Vec::with_capacity(connections);
        for c in 0..connections {
            let client = Client::builder(endpoints[c % endpoints.len()].clone())
                .token(TokenSource::from_static(String::new()))
                .connect_lazy()
                .await
                .unwrap();
            clients.push(client);
        }
        Self::over(&clients, pods, paths, mode)
    }

    /// Like [`Self::open`] over connections made by the caller (e.g. with
    /// [`connect`], one after the other, so that a round-robin Service
    /// spreads them evenly), pod `i` on `clients[i % clients.len()]`.
    pub fn over(
        clients: &[Client],
        pods: &[Pod],
        paths: impl Fn(&Pod) -> Vec<String>,
        mode: Mode,
    ) -> Self {
        let connections = clients.len();
        let pod_paths: Vec<Vec<String>> = pods.iter().map(&paths).collect();
        let receivers: Vec<Arc<str>> = pod_paths
            .iter()
            .flatten()
            .map(|p| p.as_str().into())
            .collect();
        let progress = Arc::new(Progress {
            last: receivers.iter().map(|_| AtomicU64::new(0)).collect(),
            paths: receivers,
            failures: Mutex::default(),
            reconnects: AtomicU64::new(0),
            live: AtomicUsize::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::with_capacity(pods.len());
        let mut first_receiver = 0;
        for (i, (pod, paths)) in pods.iter().zip(pod_paths).enumerate() {
            let client =
                clients[i % connections].with_token(TokenSource::from_static(pod.token.clone()));
            let receiver = Receiver {
                logs: paths.iter().map(|p| ReceiverLog::new(i, p)).collect(),
                paths,
                first_receiver,
                progress: Arc::clone(&progress),
                stopped: stopped.clone(),
            };
            first_receiver += receiver.paths.len();
            tasks.push(tokio::spawn(receiver.run(client, mode)));
        }
        Self {
            tasks,
            progress,
            stop,
        }
    }

    /// Receivers (a pod's watch of one path) in all.
    pub fn receivers(&self) -> usize {
        self.progress.paths.len()
    }

    /// Receivers that have a first version.
    pub fn with_snapshot(&self) -> usize {
        self.progress
            .last
            .iter()
            .filter(|v| v.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// `(receivers of path at version or newer, receivers of path)`.
    pub fn at_version(&self, path: &str, version: u64) -> (usize, usize) {
        let mut reached = 0;
        let mut of_path = 0;
        for (p, last) in self.progress.paths.iter().zip(&self.progress.last) {
            if &**p == path {
                of_path += 1;
                reached += usize::from(last.load(Ordering::Relaxed) >= version);
            }
        }
        (reached, of_path)
    }

    /// Waits up to `timeout` until every receiver has a first version;
    /// returns how long it took, or `None` on timeout.
    pub async fn wait_snapshots(&self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.wait(timeout, || self.with_snapshot() == self.receivers())
            .await
            .then(|| start.elapsed())
    }

    /// Waits up to `timeout` until every receiver of `path` has `version` or
    /// newer; returns how long it took, or `None` on timeout.
    pub async fn wait_version(
        &self,
        path: &str,
        version: u64,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        self.wait(timeout, || {
            let (reached, all) = self.at_version(path, version);
            reached == all
        })
        .await
        .then(|| start.elapsed())
    }

    async fn wait(&self, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Failures to open or keep a stream so far, by gRPC code.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.progress.failures.lock().clone()
    }

    /// Streams reopened after their first.
    pub fn reconnects(&self) -> u64 {
        self.progress.reconnects.load(Ordering::Relaxed)
    }

    /// Receivers whose stream is up ([`Mode::Raw`] only; the SDK's stream
    /// does not say).
    pub fn live(&self) -> usize {
        self.progress.live.load(Ordering::Relaxed)
    }

    /// Ends every watch and returns what each receiver saw.
    pub async fn close(self) -> Vec<ReceiverLog> {
        let _ = self.stop.send(true);
        let mut logs = Vec::with_capacity(self.progress.paths.len());
        for task in self.tasks {
            logs.extend(task.await.unwrap());
        }
        logs
    }
}

/// One pod's watch.
struct Receiver {
    paths: Vec<String>,
    logs: Vec<ReceiverLog>,
    first_receiver: usize,
    progress: Arc<Progress>,
    stopped: watch::Receiver<bool>,
}

impl Receiver {
    async fn run(mut self, client: Client, mode: Mode) -> Vec<ReceiverLog> {
        let mut stopped = self.stopped.clone();
        let watching = async {
            match mode {
                Mode::Sdk => self.sdk(&client).await,
                Mode::Raw => self.raw(&client).await,
            }
        };
        tokio::select! {
            () = watching => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
        self.logs
    }

    /// The SDK's reconnecting stream; restarted (as an application would)
    /// if it ends.
    async fn sdk(&mut self, client: &Client) {
        let mut pause = Pause::new();
        let mut opened = 0;
        loop {
            match client.watch(self.paths.clone()).await {
                Ok(mut stream) => {
                    self.opened(&mut opened);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(event) => {
                                let snapshot = event.kind == WatchEventKind::Snapshot;
                                for secret in &event.secrets {
                                    self.saw(secret.path(), secret.version(), snapshot);
                                }
                                pause.reset();
                            }
                            Err(error) => self.failed(&error),
                        }
                    }
                    self.progress.live.fetch_sub(1, Ordering::Relaxed);
                }
                Err(error) => self.failed(&error),
            }
            pause.wait().await;
        }
    }

    /// One stream at a time, reconnecting after it ends.
    async fn raw(&mut self, client: &Client) {
        let mut pause = Pause::new();
        let mut opened = 0;
        loop {
            match client.watch_connection(self.paths.clone()).await {
                Ok(mut stream) => {
                    let mut first = true;
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(event) => {
                                if first {
                                    self.opened(&mut opened);
                                }
                                for secret in &event.secrets {
                                    self.saw(secret.path(), secret.version(), first);
                                }
                                first = false;
                                pause.reset();
                            }
                            Err(error) => {
                                self.failed(&error);
                                break;
                            }
                        }
                    }
                    if !first {
                        self.progress.live.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(error) => self.failed(&error),
            }
            pause.wait().await;
        }
    }

    fn opened(&self, opened: &mut u64) {
        *opened += 1;
        if *opened > 1 {
            self.progress.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.progress.live.fetch_add(1, Ordering::Relaxed);
    }

    fn saw(&mut self, path: &str, version: u64, snapshot: bool) {
        let Some(i) = self.paths.iter().position(|p| p == path) else {
            // A path nobody asked for is a broker defect: make it visible.
            self.failed_as("unasked-path");
            return;
        };
        self.logs[i].saw(version, snapshot);
        self.progress.last[self.first_receiver + i].fetch_max(version, Ordering::Relaxed);
    }

    fn failed(&self, error: &coffer::Error) {
        let code = error
            .code()
            .map_or_else(|| "transport".to_string(), |c| format!("{c:?}"));
        self.failed_as(&code);
    }

    fn failed_as(&self, what: &str) {
        *self
            .progress
            .failures
            .lock()
            .entry(what.to_string())
            .or_default() += 1;
    }
}

/// Our reconnect pause: 100 ms doubling to 2 s, reset by a message.
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Self(Duration::from_millis(100))
    }

    fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

/// `n` connections to `endpoint`, made one after the other.
pub async fn connect(endpoint: &str, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = Client::builder(endpoint)
            .token(TokenSource::from_static(String::new()))
            .connect()
            .await
            .unwrap();
        clients.push(client);
    }
    clients
}
