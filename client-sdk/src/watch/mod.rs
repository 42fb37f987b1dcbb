//! Watching secrets from the broker: a first snapshot, then one event per
//! new version.
//!
//! Two ways, named for what they do with the connection:
//! - [`Client::watch`] gives a [`WatchStream`] that outlives its
//!   connections: it reconnects by itself and never yields a version twice.
//!   What a service wants.
//! - [`Client::watch_connection`] gives a [`WatchConnection`]: one stream
//!   on one connection, ending when the broker ends it. For callers that run
//!   their own reconnect loop (the sidecar).

mod connection;
mod reconnect;

use coffer_proto::v1;

pub use connection::WatchConnection;
pub use reconnect::WatchStream;

use crate::{Client, Error, Secret};

/// Whether a watch event is the initial snapshot or a later change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEventKind {
    /// The current value of every watched path.
    Snapshot,
    /// New versions of some paths.
    Update,
}

/// One message of a watch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchEvent {
    /// Snapshot or update.
    pub kind: WatchEventKind,
    /// The secrets it carries.
    pub secrets: Vec<Secret>,
}

impl Client {
    /// Watches `paths`, reconnecting by itself: the first event is a
    /// snapshot of all of them, then one event per change. See
    /// [`WatchStream`] for what it promises across reconnects.
    pub async fn watch<I, S>(&self, paths: I) -> Result<WatchStream, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WatchStream::start(self.clone(), paths.into_iter().map(Into::into).collect()).await
    }

    /// One watch stream on one connection, without reconnecting: it ends
    /// when the broker ends it (an error, or the end of the stream). For
    /// callers that run their own reconnect loop, as the sidecar does;
    /// [`Self::watch`] is the one that reconnects.
    pub async fn watch_connection<I, S>(&self, paths: I) -> Result<WatchConnection, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let request = self.request(v1::WatchSecretsRequest {
            paths: paths.into_iter().map(Into::into).collect(),
        })?;
        let inner = self
            .broker()
            .watch_secrets(request)
            .await
            .inspect_err(|status| self.refused(status))
            .map_err(Error::status)?
            .into_inner();
        Ok(WatchConnection::new(inner, self.token_source().clone()))
    }
}
