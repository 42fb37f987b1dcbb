//! Each `WatchSecrets` stream: a state machine polled by the connection's
//! own stream task (no task or channel of its own), sending the snapshot and
//! then one update per new version.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use coffer_proto::{v1, wire::WatchReply};
use futures::{Stream, StreamExt};
use tokio::{sync::watch, time::Sleep};
use tokio_stream::{StreamMap, wrappers::WatchStream};
use tonic::{Request, Response, Status};

use super::{Allowed, Broker, Call, acks::WatchGuard, limits::WatchSlot, parse_paths, read_reason};
use crate::{
    audit::Outcome,
    auth::{AuthError, WorkloadIdentity},
    error::ApiError,
    path::SecretPath,
    policy::{Capability, Policy},
};

/// One message of a watch stream.
type WatchItem = Result<WatchReply, Status>;

/// The stream handed to tonic.
pub(super) type WatchResponseStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

/// How long from now until the Unix time `at` (zero if it has passed).
fn until_unix(at: u64) -> Duration {
    let at = UNIX_EPOCH + Duration::from_secs(at);
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

impl Broker {
    /// Authorizes every path, reads the snapshot, then hands tonic a stream
    /// that sends it and one update per new version until the client leaves
    /// (tonic drops the stream), the policy revokes access, the token expires
    /// (`UNAUTHENTICATED`: the client reconnects with its refreshed token),
    /// or the broker shuts down.
    pub(super) async fn open_watch(
        &self,
        request: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let call = Call::of(&request, "WatchSecrets");
        let verified = self.authenticate_until(&request, &call).await?;
        let (who, expires_at) = (verified.identity, verified.expires_at);
        let req = request.into_inner();
        let paths = parse_paths(req.paths.iter().map(String::as_str))?;
        // Held by the stream; given back whenever it ends.
        let slot = self.acquire_watch_slot(&call, &who).await?;
        // Subscribe before deciding, so a policy change that lands between
        // the decision and the watch loop is still seen by the loop.
        let policy = self.inner.policy.subscribe();
        // After subscribing: a shutdown from here on bumps `policy`.
        if self.inner.shutdown.is_cancelled() {
            return Err(ApiError::ShuttingDown.into());
        }
        // Grants are decided after subscribing: a policy change from here on
        // reaches the stream, which decides again.
        let mut grants = Vec::with_capacity(paths.len());
        for path in &paths {
            let read = self.authorize(&call, &who, path, Capability::Read).await?;
            grants.push((
                read,
                self.authorize(&call, &who, path, Capability::Watch).await?,
            ));
        }

        // Subscribe before reading the snapshot, so no change can fall
        // between the two.
        let subscriptions: Vec<_> = paths
            .iter()
            .map(|path| {
                WatchStream::from_changes(
                    self.inner
                        .store
                        .subscribe_held(&super::holder(&who), path.base()),
                )
            })
            .collect();
        let changes = match <[_; 1]>::try_from(subscriptions) {
            Ok([one]) => Changes::One(one),
            Err(many) => Changes::Many(many.into_iter().enumerate().collect()),
        };
        let mut snapshot = Vec::with_capacity(paths.len());
        let mut watched = Vec::with_capacity(paths.len());
        for (path, (read, watch)) in paths.iter().zip(grants) {
            let result = self.read(&who, path, None).await;
            let version = result.as_ref().ok().map(|s| s.version);
            let reason = read_reason(&result);
            self.audit_served(&call, &who, path, &read, version, reason)
                .await?;
            self.audit_served(&call, &who, path, &watch, version, reason)
                .await?;
            let secret = result?;
            watched.push(Watched {
                path: path.clone(),
                shared: self.inner.store.shared(path.base()),
                sent: secret.version,
                granted: Some(watch),
            });
            snapshot.push(secret);
        }
        let first = v1::WatchSecretsResponse {
            kind: v1::WatchEventKind::Snapshot as i32,
            secrets: snapshot,
        };

        let watch = Watch {
            // In the rollout's expected set while the stream lives.
            _watching: self.inner.acks.watching(&who, &paths),
            _slot: slot,
            // The policy channel also wakes every stream at shutdown (see
            // [`Broker::shut_down`]): one registration per stream, kept
            // across updates, for both.
            policy_seen: policy.clone(),
            control: WatchStream::from_changes(policy),
            control_armed: false,
            // A stolen token must not buy the rotations after its expiry.
            expired: Box::pin(tokio::time::sleep(until_unix(expires_at))),
            registered: None,
            broker: self.clone(),
            call,
            who,
            watched,
            changes,
            first: Some(first.into()),
            ended: false,
        };
        // Boxed, so each message moves a pointer, not the state.
        let stream = futures::stream::unfold(Box::new(watch), |mut watch| async move {
            let item = watch.next().await?;
            Some((item, watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    /// After a policy change: is every path of an open watch still readable
    /// and watchable? A revocation is audited and ends the watch.
    async fn recheck_watch<'a>(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        policy: &Policy,
        paths: impl Iterator<Item = &'a SecretPath>,
    ) -> Result<(), Status> {
        for path in paths {
            for capability in [Capability::Read, Capability::Watch] {
                let decision = policy.decide(who, path, capability);
                if decision.is_allowed() {
                    continue;
                }
                tracing::info!(
                    namespace = %who.namespace,
                    service_account = %who.service_account,
                    path = %path,
                    "watch closed: access revoked"
                );
                let raw = path.to_string();
                let mut event = call.event(
                    Some(who),
                    Some(&raw),
                    Some(capability),
                    Outcome::Deny,
                    "revoked",
                );
                event.rule = decision.rule();
                return Err(match self.audit(&event).await {
                    Ok(()) => ApiError::PermissionDenied.into(),
                    Err(e) => e.into(),
                });
            }
        }
        Ok(())
    }

    /// Reads one watched path's new version and audits what is sent. The
    /// watch grant is reused until a policy change clears it (the stream
    /// sees every change before its next update); the version's update is
    /// read and encoded once and shared by every stream on the path (see
    /// [`FanOut`]). Returns the version served and its message.
    async fn serve_update(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        watched: &Watched,
        version: u64,
        granted: &mut Option<Allowed>,
    ) -> Result<(u64, WatchReply), ApiError> {
        let path = &watched.path;
        let watch = match granted {
            Some(watch) => watch,
            None => granted.insert(self.authorize(call, who, path, Capability::Watch).await?),
        };
        // A leased path's versions are each holder's own credential: never
        // shared between streams.
        let cached = watched
            .shared
            .then(|| self.inner.fanout.get(path, version))
            .flatten();
        let result = match cached {
            Some(reply) => Ok((version, reply)),
            None => self.read(who, path, Some(version)).await.map(|secret| {
                let served = secret.version;
                let update = v1::WatchSecretsResponse {
                    kind: v1::WatchEventKind::Update as i32,
                    secrets: vec![secret],
                };
                if watched.shared {
                    let reply = WatchReply::encoded(&update);
                    self.inner.fanout.put(path, version, &reply);
                    (served, reply)
                } else {
                    (served, update.into())
                }
            }),
        };
        let served = result.as_ref().ok().map(|(v, _)| *v);
        self.audit_served(call, who, path, watch, served, read_reason(&result))
            .await?;
        result
    }
}

/// One open watch: what its stream needs between two messages.
struct Watch {
    broker: Broker,
    call: Call,
    who: WorkloadIdentity,
    /// Per path, in the order of `changes`' keys.
    watched: Vec<Watched>,
    changes: Changes,
    /// Policy changes, and the broker's shutdown.
    control: WatchStream<Arc<Policy>>,
    /// `control` is registered and has not fired since.
    control_armed: bool,
    /// The policy channel as far as `control` has delivered it: a cheap
    /// check of whether `control` needs polling.
    policy_seen: watch::Receiver<Arc<Policy>>,
    expired: Pin<Box<Sleep>>,
    /// The task waker `control` and `expired` are registered with.
    registered: Option<Waker>,
    /// The snapshot, until it is sent.
    first: Option<WatchReply>,
    /// An error was sent: the stream ends.
    ended: bool,
    _slot: WatchSlot,
    _watching: WatchGuard,
}

/// What woke a watch.
enum Event {
    Policy(Arc<Policy>),
    /// The policy channel closed: the broker is gone.
    Closed,
    Expired,
    Changed(usize, u64),
}

/// The watched paths' version channels.
enum Changes {
    /// The common case: one path, no map to search.
    One(WatchStream<u64>),
    Many(StreamMap<usize, WatchStream<u64>>),
}

impl Changes {
    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, u64)>> {
        match self {
            Self::One(changes) => changes.poll_next_unpin(cx).map(|v| v.map(|v| (0, v))),
            Self::Many(changes) => changes.poll_next_unpin(cx),
        }
    }
}

impl Watch {
    /// The next message, or `None` once an error ended the stream.
    async fn next(&mut self) -> Option<WatchItem> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        let item = self.wait().await;
        self.ended = item.is_err();
        Some(item)
    }

    async fn wait(&mut self) -> WatchItem {
        loop {
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Event::Policy(current) => {
                    if self.broker.inner.shutdown.is_cancelled() {
                        return Err(ApiError::ShuttingDown.into());
                    }
                    self.broker
                        .recheck_watch(
                            &self.call,
                            &self.who,
                            &current,
                            self.watched.iter().map(|w| &w.path),
                        )
                        .await?;
                    // Every grant was made under an older policy.
                    for watched in &mut self.watched {
                        watched.granted = None;
                    }
                }
                Event::Closed => return Err(ApiError::ShuttingDown.into()),
                Event::Expired => {
                    tracing::info!(
                        namespace = %self.who.namespace,
                        service_account = %self.who.service_account,
                        "watch closed: the token expired"
                    );
                    return Err(ApiError::from(AuthError::Expired).into());
                }
                Event::Changed(index, version) => {
                    let Some(watched) = self.watched.get_mut(index) else {
                        continue;
                    };
                    if version <= watched.sent {
                        continue;
                    }
                    let mut granted = watched.granted.take();
                    // Boxed: an idle stream does not carry the space of a
                    // read in flight.
                    let update = Box::pin(self.broker.serve_update(
                        &self.call,
                        &self.who,
                        watched,
                        version,
                        &mut granted,
                    ))
                    .await;
                    watched.granted = granted;
                    let (served, reply) = update?;
                    watched.sent = served;
                    return Ok(reply);
                }
            }
        }
    }

    /// Shutdown, a policy change and the token's end win over an update
    /// that is ready at the same moment.
    ///
    /// `control` and `expired` stay registered with the task's waker until
    /// they fire, so they are polled again only when the waker changed or
    /// their own state says they fired: an update then costs no lock on the
    /// policy channel's waiter list, which every stream shares.
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
        if (fresh || self.expired.is_elapsed()) && self.expired.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Expired);
        }
        if fresh {
            self.registered = Some(cx.waker().clone());
        }
        match self.changes.poll_change(cx) {
            Poll::Ready(Some((index, version))) => Poll::Ready(Event::Changed(index, version)),
            // Every path's channel closed: only the policy, shutdown or the
            // token's end can end the stream now.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// One path of an open watch.
struct Watched {
    path: SecretPath,
    /// Its versions are the same for every holder, so an update is shared.
    shared: bool,
    /// The newest version sent.
    sent: u64,
    /// The watch grant, until a policy change.
    granted: Option<Allowed>,
}

/// How long a version's update is shared after it was first read: long
/// enough for one fan-out, short enough that a deleted version is not served
/// from here for long.
const FANOUT_TTL: Duration = Duration::from_secs(2);

/// The most paths whose newest version is shared at once.
const FANOUT_MAX_PATHS: usize = 1024;

/// The newest update of each recently changed path, read and encoded once
/// and shared by every stream that sends it. Its bytes are wiped when the
/// last stream drops them.
#[derive(Default)]
pub(super) struct FanOut {
    recent: std::sync::Mutex<Recent>,
}

/// Per path: the version, when it was read, and its encoded update.
type Recent = std::collections::HashMap<SecretPath, (u64, std::time::Instant, WatchReply)>;

impl FanOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        // Entries are inserted whole: a panicking holder leaves no half state.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The update of `path` to `version`, if it was read in the last
    /// [`FANOUT_TTL`].
    fn get(&self, path: &SecretPath, version: u64) -> Option<WatchReply> {
        let recent = self.lock();
        let (v, at, reply) = recent.get(path)?;
        (*v == version && at.elapsed() < FANOUT_TTL).then(|| reply.clone())
    }

    fn put(&self, path: &SecretPath, version: u64, reply: &WatchReply) {
        let mut recent = self.lock();
        if recent.len() >= FANOUT_MAX_PATHS {
            recent.retain(|_, (_, at, _)| at.elapsed() < FANOUT_TTL);
            if recent.len() >= FANOUT_MAX_PATHS {
                recent.clear();
            }
        }
        match recent.get(path) {
            // An older version never replaces a newer one.
            Some((v, _, _)) if *v > version => {}
            _ => {
                recent.insert(
                    path.clone(),
                    (version, std::time::Instant::now(), reply.clone()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use coffer_proto::{SecretBytes, SecretData, v1::secret_broker_server::SecretBroker};

    use super::*;
    use crate::{
        audit::AuditLog,
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        store::{SecretStore, SecretWrite, dev::DevStore},
    };

    const ISS: &str = "https://issuer.test";
    const READS: &str = "rules:\n  - name: web-reads\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [\"shop/*\"]\n    capabilities: [read, watch]\n";

    async fn broker(audit: &std::path::Path) -> (Broker, String, Arc<DevStore>) {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(DevStore::in_memory());
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(READS).unwrap(),
            store.clone(),
        )
        .with_audit(AuditLog::file(audit, 0).unwrap());
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-0"),
                Duration::from_secs(600),
            )
            .unwrap();
        (broker, token, store)
    }

    /// Writes `value` as the next version of `shop/db`.
    async fn put(store: &dyn SecretStore, value: &'static [u8]) -> u64 {
        store
            .put(
                "shop/db",
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(value)), ""),
            )
            .await
            .unwrap()
    }

    /// Opens a watch of `shop/db` with `token`.
    async fn open(broker: &Broker, token: &str) -> WatchResponseStream {
        broker
            .watch_secrets(watch_request(token))
            .await
            .unwrap()
            .into_inner()
    }

    /// A stream's next item as the message a client decodes.
    fn message(item: Option<Result<WatchReply, Status>>) -> v1::WatchSecretsResponse {
        item.unwrap().unwrap().into_message().unwrap()
    }

    fn watch_request(token: &str) -> Request<v1::WatchSecretsRequest> {
        let mut request = Request::new(v1::WatchSecretsRequest {
            paths: vec!["shop/db".into()],
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
            .metadata_mut()
            .insert("x-request-id", "watch-1".parse().unwrap());
        request
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

    #[tokio::test]
    async fn an_update_read_once_reaches_every_watcher_audited_per_stream_under_the_current_rule() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.log");
        let (broker, token, store) = broker(&audit).await;
        let mut streams = Vec::new();
        for _ in 0..3 {
            let mut stream = open(&broker, &token).await;
            stream.next().await.unwrap().unwrap();
            streams.push(stream);
        }
        put(store.as_ref(), b"v2").await;
        for stream in &mut streams {
            let update = message(stream.next().await);
            assert_eq!(update.secrets[0].version, 2);
        }
        // Same access under another rule name: the cached grant is not
        // reused across the policy change.
        broker.set_policy(Policy::from_yaml(&READS.replace("web-reads", "web-reads-2")).unwrap());
        put(store.as_ref(), b"v3").await;
        for stream in &mut streams {
            let update = message(stream.next().await);
            assert_eq!(update.secrets[0].version, 3);
        }
        let text = std::fs::read_to_string(&audit).unwrap();
        let served: Vec<(u64, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["capability"] == "watch" && r["version"].as_u64() > Some(1))
            .map(|r| {
                (
                    r["version"].as_u64().unwrap(),
                    r["rule"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut expected = vec![(2, "web-reads".to_string()); 3];
        expected.extend(vec![(3, "web-reads-2".to_string()); 3]);
        assert_eq!(served, expected);
    }

    /// A store whose every version is each holder's own (as a leased path
    /// is): the value names the pod it was issued to.
    struct PerPod(DevStore);

    #[async_trait::async_trait]
    impl SecretStore for PerPod {
        async fn get(
            &self,
            path: &str,
            version: Option<u64>,
        ) -> Result<crate::store::StoredSecret, crate::store::StoreError> {
            self.0.get(path, version).await
        }
        async fn get_held(
            &self,
            holder: &crate::store::Holder,
            path: &str,
            version: Option<u64>,
        ) -> Result<crate::store::StoredSecret, crate::store::StoreError> {
            let mut stored = self.0.get(path, version).await?;
            let pod = holder.pod.clone().unwrap_or_default();
            stored.data = SecretData::Bytes(SecretBytes::from(pod.as_bytes()));
            Ok(stored)
        }
        async fn put(
            &self,
            path: &str,
            write: SecretWrite,
        ) -> Result<u64, crate::store::StoreError> {
            self.0.put(path, write).await
        }
        async fn versions(
            &self,
            path: &str,
        ) -> Result<(u64, Vec<crate::store::VersionInfo>), crate::store::StoreError> {
            self.0.versions(path).await
        }
        fn subscribe(&self, path: &str) -> tokio::sync::watch::Receiver<u64> {
            self.0.subscribe(path)
        }
        fn shared(&self, _path: &str) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn an_update_of_a_per_holder_path_is_never_shared_between_pods() {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(PerPod(DevStore::in_memory()));
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(
            Arc::new(authn),
            Policy::from_yaml(READS).unwrap(),
            store.clone(),
        );
        let mut streams = Vec::new();
        for pod in ["web-0", "web-1"] {
            let token = signer
                .mint("coffer", "shop", "web", Some(pod), Duration::from_secs(600))
                .unwrap();
            let mut stream = open(&broker, &token).await;
            stream.next().await.unwrap().unwrap();
            streams.push((pod, stream));
        }
        put(store.as_ref(), b"v2").await;
        // Each pod's value is its own (here: its pod uid), never the one
        // another stream read first.
        let mut values = Vec::new();
        for (_, stream) in &mut streams {
            let update = message(stream.next().await);
            let secret = update.secrets.into_iter().next().unwrap();
            match SecretData::try_from(secret.value.unwrap()).unwrap() {
                SecretData::Bytes(bytes) => values.push(bytes.expose().to_vec()),
                SecretData::Map(_) => panic!("a map"),
            }
        }
        assert_ne!(values[0], values[1]);
    }
}
