//! Bounds on what one caller can hold open: watch streams per identity.
//! (Requests in flight per connection are bounded in `server.rs`.)

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// What one caller may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open `WatchSecrets` streams per identity (issuer, namespace and
    /// service account, so all pods of one workload share them). The next
    /// one is refused with `RESOURCE_EXHAUSTED`.
    pub watches_per_identity: usize,
    /// Requests one connection may have in flight at once (0: unbounded);
    /// the excess is refused with `RESOURCE_EXHAUSTED`.
    pub requests_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            watches_per_identity: 64,
            requests_per_connection: 128,
        }
    }
}

/// Open watch streams per identity.
#[derive(Default)]
pub(super) struct WatchCounts {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open watch; the slot is given back when this is dropped, however the
/// stream ends.
pub(super) struct WatchSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl WatchCounts {
    /// Takes a slot for `key`, or `None` when it already holds `max`.
    pub(super) fn acquire(&self, key: String, max: usize) -> Option<WatchSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(WatchSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_key_and_given_back_on_drop() {
        let counts = WatchCounts::default();
        let held: Vec<_> = (0..3)
            .map(|_| counts.acquire("a".into(), 3).unwrap())
            .collect();
        assert!(counts.acquire("a".into(), 3).is_none());
        let other = counts.acquire("b".into(), 3);
        assert!(other.is_some(), "another key has its own slots");
        drop(held);
        drop(other);
        assert!(counts.acquire("a".into(), 3).is_some());
        assert!(
            counts.open.lock().unwrap().len() <= 1,
            "empty keys are removed"
        );
    }
}
