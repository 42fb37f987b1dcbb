//! A watch that outlives its connections: reconnects with backoff and
//! yields each version once.

use std::{
    collections::HashMap,
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Stream, StreamExt, stream::BoxStream};

use super::{WatchConnection, WatchEvent, WatchEventKind};
use crate::{Client, Error, retry::Backoff};

/// The stream returned by [`Client::watch`]: one watch across as many
/// connections as it takes.
///
/// It reconnects by itself, with backoff, when the broker goes away or ends
/// the stream for a passing reason (a restart, a dropped connection, a
/// watch limit reached); after `UNAUTHENTICATED` (an expired token) it reads
/// the token file again and reconnects at once. Across reconnects it
/// promises:
///
/// - no version is yielded twice, and versions of a path only grow: after a
///   reconnect, the broker's snapshot is compared with the versions already
///   yielded, and only newer ones come, as one [`WatchEventKind::Update`];
/// - no final version is lost: whatever changed while the connection was
///   down is in that snapshot.
///
/// It yields an error and ends on what waiting will not fix: access
/// revoked (`PermissionDenied`), a path that does not exist or is malformed,
/// a token still refused after it was read again.
pub struct WatchStream {
    inner: BoxStream<'static, Result<WatchEvent, Error>>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

struct State {
    client: Client,
    paths: Vec<String>,
    stream: Option<WatchConnection>,
    /// The newest version yielded per path.
    yielded: HashMap<String, u64>,
    backoff: Backoff,
    /// Set after an `UNAUTHENTICATED` end until an event arrives: a second
    /// one in a row means the token read again is refused too.
    token_reread: bool,
    done: bool,
}

/// Whether to reconnect after `error`.
enum Next {
    Now,
    After,
    Stop,
}

impl WatchStream {
    /// Connects once (so a denied or malformed watch fails here), then
    /// keeps the watch alive.
    pub(crate) async fn start(client: Client, paths: Vec<String>) -> Result<Self, Error> {
        let policy = client.retry_policy();
        let mut backoff = policy.backoff();
        let mut attempt = 1;
        let first = loop {
            match client.watch_connection(paths.iter().cloned()).await {
                Ok(stream) => break stream,
                Err(error) if error.is_transient() && attempt < policy.max_attempts => {
                    attempt += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(error),
            }
        };
        let state = State {
            client,
            paths,
            stream: Some(first),
            yielded: HashMap::new(),
            backoff: policy.backoff(),
            token_reread: false,
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            let item = state.next_event().await?;
            Some((item, state))
        })
        .boxed();
        Ok(Self { inner })
    }

    /// The next event, or `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        self.inner.next().await
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl State {
    async fn next_event(&mut self) -> Option<Result<WatchEvent, Error>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                match self
                    .client
                    .watch_connection(self.paths.iter().cloned())
                    .await
                {
                    Ok(stream) => self.stream = Some(stream),
                    Err(error) => {
                        if let Some(end) = self.after(error).await {
                            return Some(Err(end));
                        }
                    }
                }
                continue;
            };
            match stream.next().await {
                Some(Ok(event)) => {
                    self.token_reread = false;
                    self.backoff.reset();
                    if let Some(event) = self.fresh(event) {
                        return Some(Ok(event));
                    }
                }
                Some(Err(error)) => {
                    self.stream = None;
                    if let Some(end) = self.after(error).await {
                        return Some(Err(end));
                    }
                }
                None => {
                    self.stream = None;
                    tracing::debug!("watch stream ended; reconnecting");
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }

    /// Decides what a failure means: waits before a reconnect and returns
    /// `None`, or ends the watch and returns the error to yield.
    async fn after(&mut self, error: Error) -> Option<Error> {
        let next = match &error {
            // Read the token file again and reconnect at once; a fixed
            // token cannot change, so its refusal ends the watch.
            Error::Unauthenticated(_) if !self.token_reread && self.client.token_refused() => {
                self.token_reread = true;
                Next::Now
            }
            // A watch limit reached on the first connection is the caller's
            // to see; later, the slot comes back as other watches close.
            Error::ResourceExhausted(_) if !self.yielded.is_empty() => Next::After,
            e if e.is_transient() => Next::After,
            _ => Next::Stop,
        };
        match next {
            Next::Now => {
                tracing::debug!(%error, "watch refused its token; reconnecting with the token read again");
                None
            }
            Next::After => {
                let delay = self.backoff.next_delay();
                tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "watch interrupted; reconnecting");
                tokio::time::sleep(delay).await;
                None
            }
            Next::Stop => {
                self.done = true;
                Some(error)
            }
        }
    }

    /// Keeps only versions newer than those yielded; `None` if nothing is
    /// left. A snapshot after the first becomes an update of what changed.
    fn fresh(&mut self, mut event: WatchEvent) -> Option<WatchEvent> {
        let first = self.yielded.is_empty();
        event.secrets.retain(|secret| {
            let newer = self
                .yielded
                .get(secret.path())
                .is_none_or(|seen| secret.version() > *seen);
            if newer {
                self.yielded
                    .insert(secret.path().to_string(), secret.version());
            }
            newer
        });
        if event.secrets.is_empty() {
            return None;
        }
        if !first {
            event.kind = WatchEventKind::Update;
        }
        Some(event)
    }
}
