//! The state of one open watch: a state machine handed to tonic as the
//! response stream, woken by a new version, a policy change, the end of its
//! authentication or the broker's shutdown.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use coffer_proto::wire::WatchReply;
use coffer_runtime::Backoff;
use futures::stream::SelectAll;
use futures::{Stream, StreamExt};
use tokio::{sync::watch, time::Sleep};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use super::fanout::Slot;
use crate::service::{Broker, Call, acks::WatchGuard, decisions::Allowed, limits::WatchSlot};
use crate::{
    auth::{AuthError, WorkloadIdentity},
    error::ApiError,
    path::SecretPath,
    policy::Policy,
    store::StoreError,
};

/// One message of a watch stream.
type WatchItem = Result<WatchReply, Status>;

/// The stream handed to tonic.
pub(crate) type WatchResponseStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;
/// One open watch, handed to tonic as the response stream: polled by the
/// connection's stream task, with no task or channel of its own.
///
/// Laid out in declaration order, what every update touches first, in the
/// first two cache lines (the struct is aligned to one): with thousands of
/// streams woken at once, each stream's state is a cache miss, so an update
/// should touch as few lines of it as it can.
#[repr(C, align(64))]
pub(super) struct Watch {
    pub(super) phase: Phase,
    /// The task waker `control` and `expired` are registered with.
    pub(super) registered: Option<Waker>,
    /// The policy channel as far as `control` has delivered it: a cheap
    /// check of whether `control` needs polling.
    pub(super) policy_seen: watch::Receiver<Arc<Policy>>,
    /// `control` is registered and has not fired since.
    pub(super) control_armed: bool,
    /// The broker keeps an audit trail (set before it serves), so every
    /// update is recorded.
    pub(super) audited: bool,
    /// When the stream ends: the token's expiry, or, when the
    /// authentication answer runs out first, a random point in the last
    /// half of the answer's life (see [`reauth_after`](super::open::reauth_after)).
    pub(super) expires_at: Instant,
    pub(super) changes: Changes,
    /// The first path; most watches have only this one.
    pub(super) first_path: Watched,
    // Not touched by an update.
    pub(super) more_paths: Vec<Watched>,
    /// Policy changes, and the broker's shutdown.
    pub(super) control: WatchStream<Arc<Policy>>,
    /// Wakes the stream at `expires_at`.
    pub(super) expired: Pin<Box<Sleep>>,
    pub(super) call: Arc<WatchCall>,
    pub(super) _slot: WatchSlot,
    pub(super) _watching: WatchGuard,
    /// The pauses between attempts at an update whose read failed for a
    /// passing reason; reset by an update sent.
    pub(super) retry: Backoff,
}

/// The first pause before an update whose read failed is tried again.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest pause between attempts at one update.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(5);

/// What the futures of a watch that wait on the broker (a read, an audit
/// record) share with it.
pub(super) struct WatchCall {
    pub(super) broker: Broker,
    pub(super) call: Call,
    pub(super) who: WorkloadIdentity,
    /// Each path and where its updates are shared, in the order of
    /// `changes`' keys.
    pub(super) paths: Vec<(SecretPath, Option<Arc<Slot>>)>,
    /// The stream's end is the authentication answer's (a TokenReview's
    /// TTL), not the token's: see [`Verified::ends_before_the_token`].
    ///
    /// [`Verified::ends_before_the_token`]: crate::auth::Verified::ends_before_the_token
    pub(super) answer_ends_first: bool,
    /// The SHA-256 of the token (never the token) when the stream ends for
    /// re-authentication: its cached answer is forgotten then, so the
    /// reconnect is reviewed at its own time rather than at the cached
    /// answer's end, together with every other stream's.
    pub(super) reviewed: Option<[u8; 32]>,
}

/// Where a watch is.
pub(super) enum Phase {
    /// The snapshot, until it is sent (boxed: a watch is in this phase
    /// once, and a smaller phase keeps what updates touch on fewer cache
    /// lines).
    First(Box<WatchReply>),
    /// Waiting for a change, a policy change, the token's end or shutdown.
    Waiting,
    /// Reading (or auditing) an update.
    Updating(Pin<Box<dyn Future<Output = Updated> + Send>>),
    /// Deciding again after a policy change.
    Rechecking(Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>),
    /// Pausing before trying an update again whose read failed for a
    /// passing reason (Vault unreachable, a share of requests used up).
    Retrying(Box<Retry>),
    /// The stream ends: an error was sent, or it ends cleanly.
    Ended,
}

/// An update to try again after `pause`.
pub(super) struct Retry {
    pause: Pin<Box<Sleep>>,
    index: usize,
    version: u64,
}

/// A finished update of path `index` to `version`, and its grant to keep.
pub(super) struct Updated {
    index: usize,
    version: u64,
    granted: Option<Box<Allowed>>,
    result: Result<(u64, WatchReply), ApiError>,
}

/// What woke a watch.
enum Event {
    Policy(Arc<Policy>),
    /// The policy channel closed: the broker is gone.
    Closed,
    Expired,
    /// Path `index` has version `u64`, seen at `Instant` (the clock read
    /// once per wake-up).
    Changed(usize, u64, Instant),
}

/// The watched paths' version channels.
pub(super) enum Changes {
    /// The common case: one path, no map to search.
    One(WatchStream<u64>),
    /// Several paths: only the channels that woke are polled (a map
    /// polled in turn would look at every path's channel per update).
    Many(SelectAll<Tagged>),
}

impl Changes {
    /// The channels of `paths` in order: a change says its path's index.
    pub(super) fn new(mut paths: Vec<WatchStream<u64>>) -> Self {
        if paths.len() == 1
            && let Some(one) = paths.pop()
        {
            return Self::One(one);
        }
        Self::Many(
            paths
                .into_iter()
                .enumerate()
                .map(|(index, changes)| Tagged { index, changes })
                .collect(),
        )
    }

    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, u64)>> {
        match self {
            Self::One(changes) => changes.poll_next_unpin(cx).map(|v| v.map(|v| (0, v))),
            Self::Many(changes) => changes.poll_next_unpin(cx),
        }
    }
}

/// One path's version channel, each change tagged with the path's index.
pub(super) struct Tagged {
    index: usize,
    changes: WatchStream<u64>,
}

impl Stream for Tagged {
    type Item = (usize, u64);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<(usize, u64)>> {
        let index = self.index;
        self.changes
            .poll_next_unpin(cx)
            .map(|version| version.map(|v| (index, v)))
    }
}

impl Stream for Watch {
    type Item = WatchItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.phase, Phase::Waiting) {
                Phase::Ended => {
                    this.phase = Phase::Ended;
                    return Poll::Ready(None);
                }
                Phase::First(first) => return Poll::Ready(Some(Ok(*first))),
                Phase::Updating(mut update) => match update.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.phase = Phase::Updating(update);
                        return Poll::Pending;
                    }
                    Poll::Ready(updated) => match this.updated(updated) {
                        Some(item) => return Poll::Ready(Some(item)),
                        // Paused before another attempt.
                        None => continue,
                    },
                },
                Phase::Rechecking(mut recheck) => match recheck.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.phase = Phase::Rechecking(recheck);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(status)) => return Poll::Ready(Some(this.end(status))),
                    // Every grant was made under an older policy.
                    Poll::Ready(Ok(())) => this.each_path(|watched| watched.granted = None),
                },
                Phase::Retrying(mut retry) => match retry.pause.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.phase = Phase::Retrying(retry);
                        return Poll::Pending;
                    }
                    Poll::Ready(()) => {
                        let event = Event::Changed(retry.index, retry.version, Instant::now());
                        if let Some(item) = this.on(event) {
                            return Poll::Ready(Some(item));
                        }
                        continue;
                    }
                },
                Phase::Waiting => {}
            }
            let event = match this.poll_event(cx) {
                Poll::Ready(event) => event,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(item) = this.on(event) {
                return Poll::Ready(Some(item));
            }
        }
    }
}

impl Watch {
    /// Shutdown, a policy change and the token's end win over an update
    /// that is ready at the same moment.
    ///
    /// `control` and `expired` stay registered with the task's waker until
    /// they fire, so they are polled again only when the waker changed or
    /// the policy channel or the clock says they fired: an update then
    /// costs no lock on the policy channel's waiter list, which every
    /// stream shares, and no look at the timer.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let fresh = !self
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if fresh || !self.control_armed || self.policy_seen.has_changed().unwrap_or(true) {
            match self.control.poll_next_unpin(cx) {
                Poll::Ready(Some(policy)) => {
                    self.control_armed = false;
                    self.policy_seen.mark_unchanged();
                    return Poll::Ready(Event::Policy(policy));
                }
                Poll::Ready(None) => return Poll::Ready(Event::Closed),
                Poll::Pending => self.control_armed = true,
            }
        }
        let now = Instant::now();
        if now >= self.expires_at {
            return Poll::Ready(Event::Expired);
        }
        if fresh {
            // Registers the timer with this waker; it cannot be due yet.
            if self.expired.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Expired);
            }
            self.registered = Some(cx.waker().clone());
        }
        match self.changes.poll_change(cx) {
            Poll::Ready(Some((index, version))) => Poll::Ready(Event::Changed(index, version, now)),
            // Every path's channel closed: only the policy, shutdown or the
            // token's end can end the stream now.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// Acts on what woke the watch: the message to send, if there is one
    /// now.
    fn on(&mut self, event: Event) -> Option<WatchItem> {
        match event {
            Event::Policy(policy) => {
                if self.call.broker.inner.shutdown.is_cancelled() {
                    return Some(self.end(ApiError::ShuttingDown.into()));
                }
                let call = Arc::clone(&self.call);
                self.phase = Phase::Rechecking(Box::pin(async move {
                    let paths = call.paths.iter().map(|(path, _)| path);
                    call.broker
                        .recheck_watch(&call.call, &call.who, &policy, paths)
                        .await
                }));
                None
            }
            Event::Closed => Some(self.end(ApiError::ShuttingDown.into())),
            Event::Expired if self.call.answer_ends_first => {
                // The token is still good; only the review that vouched for
                // it ran out. Not a failure: the stream ends cleanly (status
                // OK, as the API server ends a watch at its timeout), so the
                // sidecar and the SDK reconnect after their first, shortest
                // backoff step without logging an error, and are reviewed
                // again. Nothing is sent after the answer ran out.
                tracing::debug!(
                    namespace = %self.call.who.namespace,
                    service_account = %self.call.who.service_account,
                    "watch closed for re-authentication: the review's answer ran out"
                );
                crate::metrics::watch_reauthentication();
                if let Some(digest) = &self.call.reviewed {
                    self.call.broker.inner.authn.forget(digest);
                }
                self.phase = Phase::Ended;
                None
            }
            Event::Expired => {
                tracing::info!(
                    namespace = %self.call.who.namespace,
                    service_account = %self.call.who.service_account,
                    "watch closed: the token expired"
                );
                Some(self.end(ApiError::from(AuthError::Expired).into()))
            }
            Event::Changed(index, version, now) => {
                let audited = self.audited;
                let watched = self.path_mut(index)?;
                if version <= watched.sent {
                    return None;
                }
                // Granted, shared, and read by another stream already:
                // nothing to wait for unless the update is audited.
                if !audited
                    && watched.granted.is_some()
                    && let Some(reply) = watched.fanout.as_ref().and_then(|s| s.get(version, now))
                {
                    watched.sent = version;
                    return Some(Ok(reply));
                }
                let mut granted = watched.granted.take();
                let call = Arc::clone(&self.call);
                self.phase = Phase::Updating(Box::pin(async move {
                    let result = match call.paths.get(index) {
                        Some(path) => {
                            call.broker
                                .serve_update(&call.call, &call.who, path, version, &mut granted)
                                .await
                        }
                        // `changes` is keyed by the index into `paths`.
                        None => {
                            Err(StoreError::Internal(format!("no watched path {index}")).into())
                        }
                    };
                    Updated {
                        index,
                        version,
                        granted,
                        result,
                    }
                }));
                None
            }
        }
    }

    /// Takes a finished update back: its message, the error that ends the
    /// stream, or nothing when the read failed for a passing reason (Vault
    /// unreachable, the caller's share of Vault requests used up): the
    /// version exists, so the stream pauses and tries it again rather than
    /// end and send every watcher of the path back to reconnect at once.
    fn updated(&mut self, updated: Updated) -> Option<WatchItem> {
        let Updated {
            index,
            version,
            granted,
            result,
        } = updated;
        match result {
            Ok((served, reply)) => {
                if let Some(watched) = self.path_mut(index) {
                    watched.granted = granted;
                    watched.sent = served;
                }
                self.retry.reset();
                Some(Ok(reply))
            }
            Err(ApiError::Store(StoreError::Throttled | StoreError::Unavailable(_))) => {
                if let Some(watched) = self.path_mut(index) {
                    watched.granted = granted;
                }
                let pause = self.retry.next_delay();
                tracing::debug!(
                    version,
                    pause_ms = pause.as_millis() as u64,
                    "a watched version could not be read now; trying again"
                );
                crate::metrics::watch_update_retried();
                self.phase = Phase::Retrying(Box::new(Retry {
                    pause: Box::pin(tokio::time::sleep(pause)),
                    index,
                    version,
                }));
                None
            }
            Err(e) => Some(self.end(e.into())),
        }
    }

    fn end(&mut self, status: Status) -> WatchItem {
        self.phase = Phase::Ended;
        Err(status)
    }

    fn path_mut(&mut self, index: usize) -> Option<&mut Watched> {
        match index {
            0 => Some(&mut self.first_path),
            n => self.more_paths.get_mut(n - 1),
        }
    }

    fn each_path(&mut self, mut f: impl FnMut(&mut Watched)) {
        f(&mut self.first_path);
        self.more_paths.iter_mut().for_each(f);
    }
}

/// What an open watch keeps of one path.
pub(super) struct Watched {
    /// The newest version sent.
    pub(super) sent: u64,
    /// The watch grant, until a policy change (boxed: an update only asks
    /// whether there is one).
    pub(super) granted: Option<Box<Allowed>>,
    /// Where its updates are shared, unless they are each holder's own.
    pub(super) fanout: Option<Arc<Slot>>,
}

#[cfg(test)]
mod tests {
    use coffer_proto::v1::secret_broker_server::SecretBroker;
    use futures::StreamExt;

    use crate::policy::Policy;
    use crate::service::Broker;
    use crate::service::watch::testing::*;
    use std::{sync::Arc, time::Duration};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_updates_without_an_audit_trail_still_see_a_policy_change() {
        // No audit trail: an update another stream already read is sent
        // without waiting, and the stream is not re-polled for the policy
        // between updates; a revocation must still end every stream.
        let (broker, token, store) = unaudited_broker().await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut stream = open(&broker, &token).await;
            assert_eq!(message(stream.next().await).secrets[0].version, 1);
            streams.push(stream);
        }
        for version in 2..=4 {
            put(store.as_ref(), b"again").await;
            for stream in &mut streams {
                assert_eq!(message(stream.next().await).secrets[0].version, version);
            }
        }
        broker.set_policy(Policy::deny_all());
        for stream in &mut streams {
            let end = stream.next().await.unwrap().unwrap_err();
            assert_eq!(end.code(), tonic::Code::PermissionDenied);
            assert!(stream.next().await.is_none(), "the stream ends");
        }
    }

    #[tokio::test]
    async fn a_watch_of_several_paths_sends_each_paths_update() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, token, store) = broker(&dir.path().join("audit.log")).await;
        put_at(store.as_ref(), "shop/api", b"k1").await;
        let mut request = watch_request(&token);
        request.get_mut().paths = vec!["shop/db".into(), "shop/api".into()];
        let mut stream = broker.watch_secrets(request).await.unwrap().into_inner();
        let snapshot = message(stream.next().await);
        let mut paths: Vec<_> = snapshot.secrets.iter().map(|s| s.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["shop/api", "shop/db"]);

        put_at(store.as_ref(), "shop/api", b"k2").await;
        let update = message(stream.next().await);
        assert_eq!(update.secrets[0].path, "shop/api");
        assert_eq!(update.secrets[0].version, 2);
        put(store.as_ref(), b"v2").await;
        let update = message(stream.next().await);
        assert_eq!(update.secrets[0].path, "shop/db");
        assert_eq!(update.secrets[0].version, 2);
    }

    #[tokio::test]
    async fn set_policy_closes_a_watch_that_lost_access_and_audits_it() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.log");
        let (broker, token, store) = broker(&audit).await;
        let mut stream = open(&broker, &token).await;
        let snapshot = message(stream.next().await);
        assert_eq!(snapshot.secrets[0].version, 1);

        // An update while allowed is served and audited with its version.
        put(store.as_ref(), b"v2").await;
        let update = message(stream.next().await);
        assert_eq!(update.secrets[0].version, 2);

        broker.set_policy(Policy::deny_all());
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::PermissionDenied);
        assert!(stream.next().await.is_none(), "the stream ends");

        let text = std::fs::read_to_string(&audit).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let summary: Vec<(String, String, String, Option<u64>)> = records
            .iter()
            .map(|r| {
                (
                    r["capability"].as_str().unwrap().to_string(),
                    r["decision"].as_str().unwrap().to_string(),
                    r["reason"].as_str().unwrap().to_string(),
                    r["version"].as_u64(),
                )
            })
            .collect();
        let row = |c: &str, d: &str, r: &str, v: Option<u64>| {
            (c.to_string(), d.to_string(), r.to_string(), v)
        };
        assert_eq!(
            summary,
            [
                row("read", "allow", "allowed", Some(1)),
                row("watch", "allow", "allowed", Some(1)),
                row("watch", "allow", "allowed", Some(2)),
                row("read", "deny", "revoked", None),
            ]
        );
        assert!(records.iter().all(|r| r["request_id"] == "watch-1"));
        assert!(crate::audit::verify([("audit.log", text.as_bytes())]).is_ok());
    }

    #[tokio::test]
    async fn shut_down_ends_open_watches_and_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, token, _store) = broker(&dir.path().join("audit.log")).await;
        let mut stream = open(&broker, &token).await;
        message(stream.next().await);
        broker.shut_down();
        let end = stream.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none(), "the stream ends");
        let refused = broker
            .watch_secrets(watch_request(&token))
            .await
            .err()
            .expect("a watch opened after shutdown is refused");
        assert_eq!(refused.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn set_policy_keeps_a_watch_that_kept_access() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, token, store) = broker(&dir.path().join("audit.log")).await;
        let mut stream = open(&broker, &token).await;
        stream.next().await.unwrap().unwrap();
        broker.set_policy(Policy::from_yaml(READS).unwrap());
        put(store.as_ref(), b"v2").await;
        // The next message is the update, not a revocation.
        let update = message(stream.next().await);
        assert_eq!(update.secrets[0].version, 2);
    }

    /// A store whose reads of a version after the first fail for a passing
    /// reason a few times (the caller's share used up, then Vault
    /// unreachable) before they succeed.
    struct Flaky {
        inner: crate::store::dev::DevStore,
        failures: parking_lot::Mutex<Vec<crate::store::StoreError>>,
    }

    #[async_trait::async_trait]
    impl crate::store::SecretStore for Flaky {
        async fn get(
            &self,
            path: &crate::path::SecretName,
            version: Option<u64>,
        ) -> Result<crate::store::StoredSecret, crate::store::StoreError> {
            if version.is_some_and(|v| v > 1)
                && let Some(error) = self.failures.lock().pop()
            {
                return Err(error);
            }
            self.inner.get(path, version).await
        }
        async fn put(
            &self,
            path: &crate::path::SecretName,
            write: crate::store::SecretWrite,
        ) -> Result<u64, crate::store::StoreError> {
            self.inner.put(path, write).await
        }
        async fn versions(
            &self,
            path: &crate::path::SecretName,
        ) -> Result<(u64, Vec<crate::store::VersionInfo>), crate::store::StoreError> {
            self.inner.versions(path).await
        }
        fn subscribe(&self, path: &crate::path::SecretName) -> tokio::sync::watch::Receiver<u64> {
            self.inner.subscribe(path)
        }
    }

    #[tokio::test]
    async fn an_update_whose_read_fails_for_a_passing_reason_is_tried_again_not_the_end() {
        // Issue #27: 200 pods of one service account watching through a
        // Vault store; a rotation's reads raced past the read coalescing,
        // used up the account's share and ended streams with
        // RESOURCE_EXHAUSTED, sending their sidecars back at once.
        use crate::auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        };
        use crate::store::StoreError;
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(Flaky {
            inner: crate::store::dev::DevStore::in_memory(),
            failures: parking_lot::Mutex::new(vec![
                StoreError::Unavailable("Vault unreachable".into()),
                StoreError::Throttled,
                StoreError::Throttled,
            ]),
        });
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(READS).unwrap(),
            store.clone(),
        );
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-0"),
                Duration::from_secs(600),
            )
            .unwrap();
        let mut stream = open(&broker, &token).await;
        assert_eq!(message(stream.next().await).secrets[0].version, 1);
        put(store.as_ref(), b"v2").await;
        // Three failed reads, then the update: the stream never ends.
        let update = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the update arrives after the retries");
        assert_eq!(message(update).secrets[0].version, 2);
        assert!(store.failures.lock().is_empty(), "every failure was met");
        put(store.as_ref(), b"v3").await;
        assert_eq!(message(stream.next().await).secrets[0].version, 3);
    }
}
