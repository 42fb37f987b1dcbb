//! Turns for the tests that must not run beside each other. Every
//! end-to-end test shares one process (tests/e2e): the load tests hold
//! thousands of sockets or measure a process's memory and latency, and two
//! of them at once on a small machine measure each other; the tests on the
//! process's one kube-apiserver may delete what another applied.

use parking_lot::{Condvar, Mutex};

/// One kind of turn: at most one holder at a time.
pub struct Lane {
    busy: Mutex<bool>,
    freed: Condvar,
}

/// A test's turn on a [`Lane`], given back when dropped. Not a lock guard:
/// an async test holds it across its awaits on purpose, and a test that
/// panics gives it back as it unwinds.
#[must_use = "the turn ends when this is dropped"]
pub struct Turn {
    lane: &'static Lane,
}

/// The load tests' lane.
static HEAVY: Lane = Lane::new();

impl Lane {
    /// A free lane.
    pub const fn new() -> Self {
        Self {
            busy: Mutex::new(false),
            freed: Condvar::new(),
        }
    }

    /// Waits until the lane is free; the caller has it until the turn drops.
    pub fn take(&'static self) -> Turn {
        let mut busy = self.busy.lock();
        while *busy {
            self.freed.wait(&mut busy);
        }
        *busy = true;
        Turn { lane: self }
    }
}

impl Default for Lane {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *self.lane.busy.lock() = false;
        self.lane.freed.notify_one();
    }
}

/// Taken by a load test for its whole run, so that no two load tests share
/// the machine.
pub fn heavy() -> Turn {
    HEAVY.take()
}
