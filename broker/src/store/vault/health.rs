//! Whether Vault can serve: every call's outcome feeds it, and the server
//! reports it on `grpc.health.v1`. A failure turns it off only once the
//! last good contact is older than `cache.maxStaleness`, the time cached
//! values may still be served.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

pub(super) struct Health {
    serving: watch::Sender<bool>,
    last_contact: Mutex<Instant>,
    max_staleness: Duration,
}

impl Health {
    pub(super) fn new(serving: bool, max_staleness: Duration) -> Self {
        Self {
            serving: watch::Sender::new(serving),
            last_contact: Mutex::new(Instant::now()),
            max_staleness,
        }
    }

    /// Vault answered.
    pub(super) fn contact_ok(&self) {
        *self.last_contact.lock() = Instant::now();
        self.serving
            .send_if_modified(|serving| !std::mem::replace(serving, true));
    }

    /// Vault could not be reached (after the retries).
    pub(super) fn contact_failed(&self) {
        if self.idle() > self.max_staleness {
            self.serving
                .send_if_modified(|serving| std::mem::replace(serving, false));
        }
    }

    /// How long since Vault last answered.
    pub(super) fn idle(&self) -> Duration {
        self.last_contact.lock().elapsed()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }
}
