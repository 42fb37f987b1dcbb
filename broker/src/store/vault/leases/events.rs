//! The broker's own lease actions (issue, failed renewal, revoke), queued
//! for the audit trail.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::held::Held;
use crate::store::{LeaseAction, LeaseEvent};

/// How many lease actions wait for the audit writer before more are
/// dropped (and logged).
const EVENT_QUEUE: usize = 1024;

pub(super) struct Events {
    queue: mpsc::Sender<LeaseEvent>,
    receiver: Mutex<Option<mpsc::Receiver<LeaseEvent>>>,
    /// Whether anyone took the receiver (without an audit trail, nothing
    /// is queued).
    taken: AtomicBool,
}

impl Default for Events {
    fn default() -> Self {
        let (queue, receiver) = mpsc::channel(EVENT_QUEUE);
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
            taken: AtomicBool::new(false),
        }
    }
}

impl Events {
    /// The receiver of the broker's own lease actions, once.
    pub(super) fn take(&self) -> Option<mpsc::Receiver<LeaseEvent>> {
        let receiver = self.receiver.lock().take();
        if receiver.is_some() {
            self.taken.store(true, Ordering::Release);
        }
        receiver
    }

    /// Queues one of the broker's own lease actions on `held` for the audit
    /// trail; dropped (and logged) when the queue is full.
    pub(super) fn emit(
        &self,
        held: &Held,
        action: LeaseAction,
        lease_id: &str,
        version: u64,
        reason: &'static str,
    ) {
        if !self.taken.load(Ordering::Acquire) {
            return;
        }
        let event = LeaseEvent {
            action,
            lease_id: lease_id.to_string(),
            path: held.path().to_string(),
            version,
            owner: held.holder.clone(),
            reason,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(event) {
            tracing::warn!(lease_id = %lease_id, action = action.as_str(), "lease action not audited: the queue is full");
        }
    }
}
