//! Many watchers of one path for the fault scenarios: each a distinct pod
//! of `shop/web` (its own token, bound to its own pod name), their streams
//! sharing a few connections, each stream one `watch_connection` (no
//! reconnect: a stream the broker ends is counted, never hidden). Every
//! version each watcher receives is recorded with its `password` value, so
//! a scenario can check order, duplicates, gaps and values against what
//! Vault finally holds.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use coffer::{Client, TokenSource};
use coffer_tests::{Key, web_token};
use futures::StreamExt;
use parking_lot::Mutex;

/// What one watcher saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The snapshot's version.
    pub snapshot: u64,
    /// Every update: its version and its `password` value, in arrival order.
    pub updates: Vec<(u64, String)>,
    /// Why the stream ended, if it did.
    pub ended: Option<String>,
}

impl Seen {
    /// The newest version this watcher has (snapshot or update).
    pub fn newest(&self) -> u64 {
        self.updates.last().map_or(self.snapshot, |u| u.0)
    }
}

/// A set of open watchers.
pub struct Watchers {
    seen: Vec<Arc<Mutex<Seen>>>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watchers {
    /// Opens `pods` watches of `path` on `endpoint` over `connections`
    /// connections; each has its snapshot when this returns.
    pub async fn open(endpoint: &str, path: &str, pods: usize, connections: usize) -> Self {
        let mut shared = Vec::with_capacity(connections);
        for _ in 0..connections {
            shared.push(
                Client::builder(endpoint.to_string())
                    .token(TokenSource::from_static("unused"))
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let opens = (0..pods).map(|n| {
            let token = web_token(
                Key::Ec,
                Some(&format!("web-{n}")),
                Duration::from_secs(3600),
            );
            let pod = shared[n % connections].with_token(TokenSource::from_static(token));
            let path = path.to_string();
            async move {
                let mut stream = pod.watch_connection([path]).await.unwrap();
                let snapshot = stream
                    .next()
                    .await
                    .expect("a snapshot")
                    .expect("a snapshot, not an error");
                let seen = Arc::new(Mutex::new(Seen {
                    snapshot: snapshot.secrets[0].version(),
                    ..Seen::default()
                }));
                let record = seen.clone();
                let task = tokio::spawn(async move {
                    loop {
                        match stream.next().await {
                            Some(Ok(event)) => {
                                let mut seen = record.lock();
                                for secret in &event.secrets {
                                    let value = secret
                                        .expose_key("password")
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default();
                                    seen.updates.push((secret.version(), value));
                                }
                            }
                            Some(Err(error)) => {
                                record.lock().ended = Some(format!("{:?}: {error}", error.code()));
                                return;
                            }
                            None => {
                                record.lock().ended = Some("end of stream".into());
                                return;
                            }
                        }
                    }
                });
                (seen, task)
            }
        });
        let opened: Vec<_> = futures::stream::iter(opens)
            .buffer_unordered(64)
            .collect()
            .await;
        let (seen, tasks) = opened.into_iter().unzip();
        Self {
            seen,
            _tasks: tasks,
        }
    }

    /// How many watchers.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// What every watcher saw so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.iter().map(|s| s.lock().clone()).collect()
    }

    /// The streams that ended, with why.
    pub fn ended(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|s| s.lock().ended.clone())
            .collect()
    }

    /// Waits until every watcher has `version` or newer; how long it took,
    /// or `None` after `timeout`.
    pub async fn reach(&self, version: u64, timeout: Duration) -> Option<Duration> {
        let begin = Instant::now();
        loop {
            if self.seen.iter().all(|s| s.lock().newest() >= version) {
                return Some(begin.elapsed());
            }
            if begin.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks every watcher: no stream ended; updates strictly in version
    /// order (each version once); every version of `acked` newer than its
    /// snapshot received, with its value; nothing received that `vault`
    /// does not hold with the same value. Returns the count of versions
    /// missed over all watchers (asserted zero by the caller, after it
    /// printed its figures).
    pub fn check(&self, acked: &[(u64, String)], vault: &dyn Fn(u64) -> Option<String>) -> usize {
        let ended = self.ended();
        assert!(
            ended.is_empty(),
            "{} of {} watch streams ended, e.g. {:?}",
            ended.len(),
            self.len(),
            ended.first()
        );
        let mut missed = 0;
        let mut checked = std::collections::HashMap::new();
        for (n, seen) in self.seen().iter().enumerate() {
            let versions: Vec<u64> = seen.updates.iter().map(|u| u.0).collect();
            let ordered = versions.first().is_none_or(|first| *first > seen.snapshot)
                && versions.windows(2).all(|w| w[0] < w[1]);
            assert!(
                ordered,
                "watcher {n}: updates out of order or repeated: snapshot {} then {versions:?}",
                seen.snapshot
            );
            for (version, value) in &seen.updates {
                let held = checked
                    .entry(*version)
                    .or_insert_with(|| vault(*version))
                    .clone();
                assert_eq!(
                    held.as_deref(),
                    Some(value.as_str()),
                    "watcher {n} received version {version}, which Vault does not hold so"
                );
            }
            for (version, value) in acked.iter().filter(|a| a.0 > seen.snapshot) {
                match seen.updates.iter().find(|u| u.0 == *version) {
                    Some(got) => assert_eq!(&got.1, value, "watcher {n}, version {version}"),
                    None => missed += 1,
                }
            }
        }
        missed
    }
}
