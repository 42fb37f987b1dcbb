//! Cancel requests: an app's `CancelRequest` names a backend by its key
//! data, which the proxy passed on from the upstream. It is forwarded only
//! when the key is one of this proxy's open sessions, so a process that
//! reaches the listener cannot cancel other clients' queries on the server.

use std::collections::HashSet;

use bytes::BytesMut;
use parking_lot::Mutex;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::{Failure, PostgresProxy};

/// Backend key data (process id, secret key) of the open sessions. Bounded
/// by the proxy's connection limit: one entry per open session.
#[derive(Debug, Default)]
pub(super) struct CancelTable(Mutex<HashSet<(i32, i32)>>);

/// Removes a session's key from the cancel table when the session ends.
pub(super) struct SessionKey<'a> {
    table: &'a CancelTable,
    key: (i32, i32),
}

impl<'a> SessionKey<'a> {
    pub(super) fn new(table: &'a CancelTable, key: (i32, i32)) -> Self {
        table.0.lock().insert(key);
        Self { table, key }
    }
}

impl Drop for SessionKey<'_> {
    fn drop(&mut self) {
        self.table.0.lock().remove(&self.key);
    }
}

impl PostgresProxy {
    /// Sends a cancel request for a session this proxy opened; ignores any other.
    pub(super) async fn cancel(&self, pid: i32, key: i32) {
        if !self.sessions.0.lock().contains(&(pid, key)) {
            // Someone with access to the listener probing other sessions
            // (the app's own keys are always in the table).
            tracing::info!(proxy = %self.spec.name, "cancel request for a session this proxy did not open: not forwarded");
            return;
        }
        let result = async {
            let mut upstream = self.connect().await?;
            let mut buf = BytesMut::new();
            frontend::cancel_request(pid, key, &mut buf);
            upstream.write_all(&buf).await?;
            upstream.shutdown().await?;
            Ok::<_, Failure>(())
        };
        match result.await {
            Ok(()) => tracing::debug!(proxy = %self.spec.name, "cancel request forwarded"),
            Err(error) => tracing::warn!(proxy = %self.spec.name, %error, "cancel request failed"),
        }
    }
}
