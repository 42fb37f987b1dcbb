//! Change detection: what the store knows of each path's versions, the
//! watch channel of each watched path, and its one poller.
//!
//! One poller per watched path reads the KV v2 metadata `current_version`
//! every `poll.interval` (jittered) and feeds the path's watch channel; it
//! stops when the last receiver goes. N watching pods cost one poll. KV v1
//! keeps no versions, so changes on a KV v1 mount are not detected.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{config::PollConfig, limits::jittered};
use crate::store::StoreError;
use crate::swept::SweptMap;

/// What the store knows of each path's versions, and who watches them.
#[derive(Default)]
pub(super) struct Versions {
    known: Mutex<HashMap<String, Known>>,
    watchers: Mutex<SweptMap<String, watch::Sender<u64>>>,
}

/// What the store knows about one path's versions.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The newest version seen anywhere (a lower bound of the current one).
    newest: u64,
    /// The version a latest read, the metadata or our own write said was
    /// current. Only this may let a versioned read fill the latest entry: an
    /// old version read first on a cold path must not become "latest".
    current: Option<u64>,
    /// When `current` was last said.
    confirmed: Option<Instant>,
}

/// What a poller needs of the store it polls for.
pub(super) trait Polled: Send + Sync + 'static {
    fn versions(&self) -> &Versions;
    fn poll_config(&self) -> &PollConfig;
    /// The current version of `path` in Vault (0 when absent).
    fn current_version(&self, path: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Records that `version` is current, telling whoever must know.
    fn note_current(&self, path: &str, version: u64);
}

impl Versions {
    /// Records that `version` was said current (metadata, a latest read, a
    /// write); whether it is newer than any seen before.
    ///
    /// An older "current" than one said before (a standby that has not
    /// caught up) changes nothing: the current version never goes back.
    pub(super) fn record_current(&self, path: &str, version: u64) -> bool {
        let mut known = self.known.lock();
        let entry = known.entry(path.to_string()).or_default();
        if entry.current.is_none_or(|c| c <= version) {
            entry.current = Some(version);
            entry.confirmed = Some(Instant::now());
        }
        raise(entry, version)
    }

    /// The version said current within `within`, if nothing newer was seen
    /// since: a read of the latest may read that version, as a cached
    /// latest value that old would be served.
    pub(super) fn recently_confirmed(&self, path: &str, within: Duration) -> Option<u64> {
        let known = self.known.lock();
        let k = known.get(path)?;
        let current = k.current.filter(|&c| c >= k.newest)?;
        k.confirmed
            .is_some_and(|at| at.elapsed() < within)
            .then_some(current)
    }

    /// Sets `path`'s books back to `version`, seen current after all: the
    /// path was deleted and written anew, and its versions restarted.
    pub(super) fn restart(&self, path: &str, version: u64) {
        let mut known = self.known.lock();
        let entry = known.entry(path.to_string()).or_default();
        entry.newest = version;
        entry.current = Some(version);
        entry.confirmed = Some(Instant::now());
    }

    /// Records that `version` exists, so the current one is at least that;
    /// whether it is newer than any seen before.
    pub(super) fn record(&self, path: &str, version: u64) -> bool {
        raise(
            self.known.lock().entry(path.to_string()).or_default(),
            version,
        )
    }

    /// Tells the watchers of `path` that `version` exists.
    pub(super) fn notify(&self, path: &str, version: u64) {
        if let Some(tx) = self.watchers.lock().get(path) {
            tx.send_if_modified(|v| {
                let changed = *v < version;
                if changed {
                    *v = version;
                }
                changed
            });
        }
    }

    /// The newest version of `path` seen (0: none).
    pub(super) fn newest(&self, path: &str) -> u64 {
        self.known.lock().get(path).map_or(0, |k| k.newest)
    }

    /// Whether `version` is confirmed current and nothing newer was seen.
    pub(super) fn is_confirmed_current(&self, path: &str, version: u64) -> bool {
        self.known
            .lock()
            .get(path)
            .is_some_and(|k| k.current == Some(version) && k.newest <= version)
    }

    /// A receiver of `path`'s version, and whether the path was unwatched
    /// (so it needs a poller). Unwatched paths that no poller will remove
    /// (`polled` false) are dropped here, so a path never gets two.
    pub(super) fn watch(
        &self,
        path: &str,
        polled: impl Fn(&str) -> bool,
    ) -> (watch::Receiver<u64>, bool) {
        let mut watchers = self.watchers.lock();
        if let Some(tx) = watchers.get(path) {
            return (tx.subscribe(), false);
        }
        let (tx, rx) = watch::channel(self.newest(path));
        watchers.insert(path.to_string(), tx, |p, tx| {
            tx.receiver_count() > 0 || polled(p)
        });
        (rx, true)
    }

    /// How many paths are watched.
    pub(super) fn watched_paths(&self) -> usize {
        self.watchers.lock().len()
    }

    /// Drops `path`'s channel if nobody watches it; true if dropped.
    fn stop_watching_if_unused(&self, path: &str) -> bool {
        let mut watchers = self.watchers.lock();
        match watchers.get(path) {
            Some(tx) if tx.receiver_count() > 0 => false,
            _ => {
                watchers.remove(path);
                true
            }
        }
    }
}

/// Raises `known`'s newest to `version`; whether it was newer.
fn raise(known: &mut Known, version: u64) -> bool {
    let newer = version > known.newest;
    if newer {
        known.newest = version;
    }
    newer
}

/// Starts the one poller of `path` on the current runtime.
pub(super) fn spawn_poller<S: Polled>(store: &Arc<S>, path: &str, shutdown: CancellationToken) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let weak = Arc::downgrade(store);
            let path = path.to_string();
            handle.spawn(async move { poll_loop(weak, path, shutdown).await });
        }
        Err(_) => tracing::error!(
            path,
            "no async runtime: changes to this path are not watched"
        ),
    }
}

/// The one poller of `path`: reads `current_version` until nobody watches.
async fn poll_loop<S: Polled>(weak: Weak<S>, path: String, shutdown: CancellationToken) {
    let poller = crate::metrics::poller_started();
    loop {
        let interval = {
            let Some(store) = weak.upgrade() else { return };
            if store.versions().stop_watching_if_unused(&path) {
                tracing::debug!(path, "no watchers left; polling stops");
                return;
            }
            match store.current_version(&path).await {
                Ok(version) => {
                    poller.polled();
                    store.note_current(&path, version);
                }
                Err(error) => tracing::debug!(path, %error, "polling Vault failed"),
            }
            let poll = store.poll_config();
            jittered(poll.interval, poll.jitter)
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_current_version_never_lowers_what_is_known() {
        let versions = Versions::default();
        assert!(versions.record_current("a", 5));
        // A standby's metadata, behind our write: nothing moves back.
        assert!(!versions.record_current("a", 4));
        assert_eq!(versions.newest("a"), 5);
        assert!(versions.is_confirmed_current("a", 5));
        assert!(!versions.is_confirmed_current("a", 4));
        let (rx, _) = versions.watch("a", |_| true);
        versions.notify("a", 4);
        assert_eq!(*rx.borrow(), 5, "watchers never go back");
        // The path was deleted and written anew: its books restart.
        versions.restart("a", 1);
        assert_eq!(versions.newest("a"), 1);
        assert!(versions.is_confirmed_current("a", 1));
        assert_eq!(
            versions.recently_confirmed("a", Duration::from_secs(30)),
            Some(1)
        );
        assert_eq!(versions.recently_confirmed("a", Duration::ZERO), None);
        // Something newer seen (a version read), not said current: no.
        versions.record("a", 2);
        assert_eq!(
            versions.recently_confirmed("a", Duration::from_secs(30)),
            None
        );
    }
}
