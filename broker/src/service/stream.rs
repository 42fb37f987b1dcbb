//! Each `WatchSecrets` stream: a state machine polled by the connection's
//! own stream task (no task or channel of its own), sending the snapshot and
//! then one update per new version.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll, Waker},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    store::StoreError,
};

/// One message of a watch stream.
type WatchItem = Result<WatchReply, Status>;

/// The stream handed to tonic.
pub(super) type WatchResponseStream = Pin<Box<dyn Stream<Item = WatchItem> + Send>>;

/// The share of an authentication answer's remaining life over which the
/// ends of the streams opened with it are spread. Half: a 500-pod
/// Deployment started at once then re-reviews over 30 s of a 60 s answer,
/// about 17 reviews a second, under TokenReview's default 20 a second (a
/// fifth would be 42 a second, and the excess refused as throttled).
const REAUTH_SPREAD: f64 = 0.5;

/// When a stream whose authentication answer runs out in `remaining` ends
/// for re-authentication: `fraction` (in [0, 1), at random) of the way
/// back from the answer's end into its last [`REAUTH_SPREAD`]; never after
/// the answer's end.
fn reauth_after(remaining: Duration, fraction: f64) -> Duration {
    // A NaN or out-of-range fraction ends the stream at the answer's end.
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    remaining.mul_f64(1.0 - REAUTH_SPREAD * fraction)
}

/// A uniformly random fraction in [0, 1).
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system RNG does not fail on supported platforms; if it ever did,
    // the stream would end at the answer's end, as without the spread.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The SHA-256 of the request's bearer token, as the verification cache
/// names it (the stream never holds the token itself).
fn token_digest<T>(request: &Request<T>) -> Option<[u8; 32]> {
    let header = request.metadata().get("authorization")?.to_str().ok()?;
    let token = crate::auth::BearerToken::from_header(header).ok()?;
    Some(crate::auth::cache::token_digest(&token))
}

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
    /// the authenticator's answer runs out before the token (a TokenReview's
    /// TTL: the stream ends without an error, and the client reconnects to
    /// be reviewed again), or the broker shuts down.
    pub(super) async fn open_watch(
        &self,
        request: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<WatchResponseStream>, Status> {
        let call = Call::of(&request, "WatchSecrets");
        let verified = self.authenticate_until(&request, &call).await?;
        let (who, expires_at) = (verified.identity.clone(), verified.expires_at);
        let answer_ends_first = verified.ends_before_the_token();
        // Streams opened together with one review's answer would all end
        // together, and their reconnects all ask for a review at once: each
        // ends at its own random point in the last half of the answer's
        // life instead, and its token is then reviewed again.
        let lifetime = until_unix(expires_at);
        let (ends_in, reviewed) = if answer_ends_first {
            (
                reauth_after(lifetime, random_fraction()),
                token_digest(&request),
            )
        } else {
            (lifetime, None)
        };
        let req = request.into_inner();
        let paths = parse_paths(req.paths.iter().map(String::as_str))?;
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
        // Held by the stream; given back whenever it ends. Taken once the
        // paths are authorized, so only paths the caller may watch are
        // counted when it is refused.
        let slot = self.acquire_watch_slot(&call, &who, &paths).await?;

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
        let mut shared = Vec::with_capacity(paths.len());
        for (path, (read, watch)) in paths.iter().zip(grants) {
            let result = self.read(&who, path, None).await;
            let version = result.as_ref().ok().map(|s| s.version);
            let reason = read_reason(&result);
            self.audit_served(&call, &who, path, &read, version, reason)
                .await?;
            self.audit_served(&call, &who, path, &watch, version, reason)
                .await?;
            let secret = result?;
            // A leased path's versions are each holder's own credential:
            // never shared between streams.
            let fanout = self
                .inner
                .store
                .shared(path.base())
                .then(|| self.inner.fanout.slot(path));
            watched.push(Watched {
                sent: secret.version,
                granted: Some(Box::new(watch)),
                fanout: fanout.clone(),
            });
            shared.push(fanout);
            snapshot.push(secret);
        }
        let first = v1::WatchSecretsResponse {
            kind: v1::WatchEventKind::Snapshot as i32,
            secrets: snapshot,
        };
        let mut watched = watched.into_iter();
        let Some(first_path) = watched.next() else {
            // `parse_paths` refuses an empty list.
            return Err(ApiError::InvalidArgument("no paths to watch".into()).into());
        };

        let watch = Watch {
            phase: Phase::First(Box::new(first.into())),
            registered: None,
            expires_at: Instant::now() + ends_in,
            // The policy channel also wakes every stream at shutdown (see
            // [`Broker::shut_down`]): one registration per stream, kept
            // across updates, for both.
            policy_seen: policy.clone(),
            control_armed: false,
            audited: self.audit_log().is_some(),
            first_path,
            more_paths: watched.collect(),
            changes,
            control: WatchStream::from_changes(policy),
            // A stolen token must not buy the rotations after its expiry.
            expired: Box::pin(tokio::time::sleep(ends_in)),
            // In the rollout's expected set while the stream lives.
            _watching: self.inner.acks.watching(&who, &paths),
            _slot: slot,
            call: Arc::new(WatchCall {
                broker: self.clone(),
                call,
                who,
                paths: paths.into_iter().zip(shared).collect(),
                answer_ends_first,
                reviewed,
            }),
        };
        Ok(Response::new(Box::pin(watch)))
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
        (path, fanout): &(SecretPath, Option<Arc<Slot>>),
        version: u64,
        granted: &mut Option<Box<Allowed>>,
    ) -> Result<(u64, WatchReply), ApiError> {
        let watch = match granted {
            Some(watch) => watch,
            None => granted.insert(Box::new(
                self.authorize(call, who, path, Capability::Watch).await?,
            )),
        };
        let cached = fanout
            .as_ref()
            .and_then(|slot| slot.get(version, Instant::now()));
        let result = match cached {
            Some(reply) => Ok((version, reply)),
            None => self.read(who, path, Some(version)).await.map(|secret| {
                let served = secret.version;
                let update = v1::WatchSecretsResponse {
                    kind: v1::WatchEventKind::Update as i32,
                    secrets: vec![secret],
                };
                match fanout {
                    Some(slot) => {
                        let reply = WatchReply::encoded(&update);
                        slot.put(version, &reply);
                        (served, reply)
                    }
                    None => (served, update.into()),
                }
            }),
        };
        let served = result.as_ref().ok().map(|(v, _)| *v);
        self.audit_served(call, who, path, watch, served, read_reason(&result))
            .await?;
        result
    }
}

/// One open watch, handed to tonic as the response stream: polled by the
/// connection's stream task, with no task or channel of its own.
///
/// Laid out in declaration order, what every update touches first, in the
/// first two cache lines (the struct is aligned to one): with thousands of
/// streams woken at once, each stream's state is a cache miss, so an update
/// should touch as few lines of it as it can.
#[repr(C, align(64))]
struct Watch {
    phase: Phase,
    /// The task waker `control` and `expired` are registered with.
    registered: Option<Waker>,
    /// The policy channel as far as `control` has delivered it: a cheap
    /// check of whether `control` needs polling.
    policy_seen: watch::Receiver<Arc<Policy>>,
    /// `control` is registered and has not fired since.
    control_armed: bool,
    /// The broker keeps an audit trail (set before it serves), so every
    /// update is recorded.
    audited: bool,
    /// When the stream ends: the token's expiry, or, when the
    /// authentication answer runs out first, a random point in the last
    /// half of the answer's life (see [`reauth_after`]).
    expires_at: Instant,
    changes: Changes,
    /// The first path; most watches have only this one.
    first_path: Watched,
    // Not touched by an update.
    more_paths: Vec<Watched>,
    /// Policy changes, and the broker's shutdown.
    control: WatchStream<Arc<Policy>>,
    /// Wakes the stream at `expires_at`.
    expired: Pin<Box<Sleep>>,
    call: Arc<WatchCall>,
    _slot: WatchSlot,
    _watching: WatchGuard,
}

/// What the futures of a watch that wait on the broker (a read, an audit
/// record) share with it.
struct WatchCall {
    broker: Broker,
    call: Call,
    who: WorkloadIdentity,
    /// Each path and where its updates are shared, in the order of
    /// `changes`' keys.
    paths: Vec<(SecretPath, Option<Arc<Slot>>)>,
    /// The stream's end is the authentication answer's (a TokenReview's
    /// TTL), not the token's: see [`Verified::ends_before_the_token`].
    ///
    /// [`Verified::ends_before_the_token`]: crate::auth::Verified::ends_before_the_token
    answer_ends_first: bool,
    /// The SHA-256 of the token (never the token) when the stream ends for
    /// re-authentication: its cached answer is forgotten then, so the
    /// reconnect is reviewed at its own time rather than at the cached
    /// answer's end, together with every other stream's.
    reviewed: Option<[u8; 32]>,
}

/// Where a watch is.
enum Phase {
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
    /// The stream ends: an error was sent, or it ends cleanly.
    Ended,
}

/// A finished update of path `index`, and its grant to keep.
struct Updated {
    index: usize,
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
                    Poll::Ready(updated) => return Poll::Ready(Some(this.updated(updated))),
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
                        granted,
                        result,
                    }
                }));
                None
            }
        }
    }

    /// Takes a finished update back: its message, or the error that ends
    /// the stream.
    fn updated(&mut self, updated: Updated) -> WatchItem {
        let Updated {
            index,
            granted,
            result,
        } = updated;
        match result {
            Ok((served, reply)) => {
                if let Some(watched) = self.path_mut(index) {
                    watched.granted = granted;
                    watched.sent = served;
                }
                Ok(reply)
            }
            Err(e) => self.end(e.into()),
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
struct Watched {
    /// The newest version sent.
    sent: u64,
    /// The watch grant, until a policy change (boxed: an update only asks
    /// whether there is one).
    granted: Option<Box<Allowed>>,
    /// Where its updates are shared, unless they are each holder's own.
    fanout: Option<Arc<Slot>>,
}

/// How long a version's update is shared after it was first read: long
/// enough for one fan-out, short enough that a deleted version is not served
/// from here for long.
const FANOUT_TTL: Duration = Duration::from_secs(2);

/// Paths in the fan-out's index before it first drops those no stream
/// watches.
const FANOUT_SWEEP_AT: usize = 1024;

/// The newest update of each watched path, read and encoded once and shared
/// by every stream that sends it. Each stream holds its path's [`Slot`], so
/// an update costs one read lock on the slot, not a lookup under a lock
/// every stream shares.
#[derive(Default)]
pub(super) struct FanOut {
    index: std::sync::Mutex<SlotIndex>,
}

/// Each watched path's slot, held weakly: a slot lives as long as a stream
/// holds it, so the index is bounded by the paths open streams watch (and
/// the dead entries since its last sweep).
#[derive(Default)]
struct SlotIndex {
    slots: std::collections::HashMap<SecretPath, Weak<Slot>>,
    /// The size at which the dead entries are dropped next: twice what the
    /// last sweep kept, so sweeps cost O(1) per insert however many paths
    /// are watched.
    sweep_at: usize,
}

impl FanOut {
    /// The slot of `path`, shared by every stream that watches it now.
    fn slot(&self, path: &SecretPath) -> Arc<Slot> {
        // Entries are inserted whole: a panicking holder leaves no half state.
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = index.slots.get(path).and_then(Weak::upgrade) {
            return slot;
        }
        if index.slots.len() >= index.sweep_at.max(FANOUT_SWEEP_AT) {
            index.slots.retain(|_, slot| slot.strong_count() > 0);
            index.sweep_at = index.slots.len().saturating_mul(2);
        }
        let slot = Arc::new(Slot::default());
        index.slots.insert(path.clone(), Arc::downgrade(&slot));
        slot
    }

    /// Paths in the index, dead entries included (for tests).
    #[cfg(test)]
    fn indexed(&self) -> usize {
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .slots
            .len()
    }
}

/// One path's newest update: its version, when it was read, and its encoded
/// message, whose bytes are wiped when the last stream drops them.
#[derive(Default)]
pub(super) struct Slot {
    newest: std::sync::RwLock<Option<(u64, Instant, WatchReply)>>,
}

impl Slot {
    /// The update to `version`, if it was read in the [`FANOUT_TTL`] before
    /// `now`.
    fn get(&self, version: u64, now: Instant) -> Option<WatchReply> {
        let newest = self.newest.read().unwrap_or_else(|p| p.into_inner());
        let (v, at, reply) = newest.as_ref()?;
        (*v == version && now.saturating_duration_since(*at) < FANOUT_TTL).then(|| reply.clone())
    }

    fn put(&self, version: u64, reply: &WatchReply) {
        let mut newest = self.newest.write().unwrap_or_else(|p| p.into_inner());
        // An older version never replaces a newer one.
        if newest.as_ref().is_none_or(|(v, _, _)| *v <= version) {
            *newest = Some((version, Instant::now(), reply.clone()));
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
        let (broker, token, store) = unaudited_broker().await;
        (
            broker.with_audit(AuditLog::file(audit, 0).unwrap()),
            token,
            store,
        )
    }

    /// A broker without an audit trail, a token for `shop/web` and its store.
    async fn unaudited_broker() -> (Broker, String, Arc<DevStore>) {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(DevStore::in_memory());
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
        (broker, token, store)
    }

    /// Writes `value` as the next version of `shop/db`.
    async fn put(store: &dyn SecretStore, value: &'static [u8]) -> u64 {
        put_at(store, "shop/db", value).await
    }

    /// Writes `value` as the next version of `path`.
    async fn put_at(store: &dyn SecretStore, path: &str, value: &'static [u8]) -> u64 {
        store
            .put(
                path,
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

    /// Vouches for every token as `shop/web`: the answer runs out in
    /// `answer_secs`, the token in `token_secs` (none: no `exp`).
    struct Answers {
        answer_secs: u64,
        token_secs: Option<u64>,
        /// Answers given.
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Answers {
        fn new(answer_secs: u64, token_secs: Option<u64>) -> Self {
            Self {
                answer_secs,
                token_secs,
                calls: Default::default(),
            }
        }
    }

    #[async_trait::async_trait]
    impl crate::auth::Authenticator for Answers {
        async fn authenticate(
            &self,
            _token: &crate::auth::BearerToken,
        ) -> Result<crate::auth::Verified, AuthError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = crate::auth::jwt::unix_now();
            Ok(crate::auth::Verified {
                identity: WorkloadIdentity {
                    issuer: ISS.into(),
                    namespace: "shop".into(),
                    service_account: "web".into(),
                    service_account_uid: None,
                    pod_name: Some("web-0".into()),
                    pod_uid: None,
                },
                expires_at: now + self.answer_secs,
                key: None,
                token_exp: self.token_secs.map(|secs| now + secs),
            })
        }

        fn issuers(&self) -> Vec<String> {
            vec![ISS.into()]
        }
    }

    /// A broker whose authenticator is `answers`, and its store.
    async fn answered_broker(answers: Answers) -> (Broker, Arc<DevStore>) {
        answered_by(Arc::new(answers)).await
    }

    /// A broker whose authenticator is `authn`, and its store.
    async fn answered_by(authn: Arc<dyn crate::auth::Authenticator>) -> (Broker, Arc<DevStore>) {
        let store = Arc::new(DevStore::in_memory());
        put(store.as_ref(), b"v1").await;
        let broker = Broker::new(authn, Policy::from_yaml(READS).unwrap(), store.clone());
        (broker, store)
    }

    #[test]
    fn a_reauthentication_end_falls_in_the_spread_window_and_never_after_the_answer() {
        let remaining = Duration::from_secs(60);
        let earliest = remaining.mul_f64(1.0 - REAUTH_SPREAD);
        assert_eq!(reauth_after(remaining, 0.0), remaining);
        assert_eq!(
            reauth_after(remaining, 0.5),
            remaining.mul_f64(1.0 - REAUTH_SPREAD / 2.0)
        );
        // Out of range or not a number: never past the answer's end, never
        // before the window.
        assert_eq!(reauth_after(remaining, f64::NAN), remaining);
        assert_eq!(reauth_after(remaining, -3.0), remaining);
        assert_eq!(reauth_after(remaining, 7.0), earliest);
        let ends: Vec<Duration> = (0..10_000)
            .map(|_| reauth_after(remaining, random_fraction()))
            .collect();
        assert!(ends.iter().all(|end| *end <= remaining));
        assert!(ends.iter().all(|end| *end >= earliest));
        // Spread over the whole window: each tenth of it is hit.
        let window = (remaining - earliest).as_secs_f64();
        let mut tenths = [0usize; 10];
        for end in &ends {
            let into = (remaining - *end).as_secs_f64() / window;
            tenths[((into * 10.0) as usize).min(9)] += 1;
        }
        assert!(tenths.iter().all(|n| *n > 700), "{tenths:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watches_opened_together_with_one_answer_end_spread_out_and_never_after_it() {
        let (broker, _store) = answered_broker(Answers::new(2, Some(600))).await;
        let answer_end = UNIX_EPOCH + Duration::from_secs(crate::auth::jwt::unix_now() + 2);
        let mut streams = Vec::new();
        for _ in 0..40 {
            let mut stream = open(&broker, "opaque").await;
            message(stream.next().await);
            streams.push(stream);
        }
        let ends = futures::future::join_all(streams.into_iter().map(|mut stream| async move {
            let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the stream ends by the answer's end");
            assert!(end.is_none(), "a clean end, not {end:?}");
            SystemTime::now()
        }))
        .await;
        let (first, last) = (ends.iter().min().unwrap(), ends.iter().max().unwrap());
        // The answer had between one and two seconds left: the window is
        // at least 500 ms, and 40 ends spread over it.
        assert!(
            last.duration_since(*first).unwrap() >= Duration::from_millis(100),
            "ends spread over {:?}",
            last.duration_since(*first).unwrap()
        );
        for end in &ends {
            assert!(
                *end <= answer_end + Duration::from_millis(50),
                "a stream outlived its answer by {:?}",
                end.duration_since(answer_end).unwrap_or_default()
            );
        }
    }

    #[tokio::test]
    async fn a_watch_ended_for_reauthentication_is_reviewed_again_when_it_reconnects() {
        let answers = Arc::new(Answers::new(2, Some(600)));
        let cached = crate::auth::cache::CachingAuthenticator::new(
            answers.clone(),
            std::num::NonZeroUsize::new(8).unwrap(),
        );
        let (broker, _store) = answered_by(Arc::new(cached)).await;
        let calls = || answers.calls.load(std::sync::atomic::Ordering::SeqCst);
        let mut stream = open(&broker, "opaque").await;
        message(stream.next().await);
        drop(open(&broker, "opaque").await);
        assert_eq!(calls(), 1, "the answer is cached while it holds");
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends by the answer's end");
        assert!(end.is_none());
        // Reconnecting at once, before the cached answer's own end: the
        // token is reviewed again now, not with every other stream later.
        drop(open(&broker, "opaque").await);
        assert_eq!(calls(), 2);
    }

    #[tokio::test]
    async fn a_watch_whose_review_runs_out_before_the_token_ends_cleanly() {
        let (broker, store) = answered_broker(Answers::new(1, Some(600))).await;
        let before = crate::metrics::watch_reauthentications();
        let mut stream = open(&broker, "opaque").await;
        assert_eq!(message(stream.next().await).secrets[0].version, 1);
        // Within the answer's second at most: the end, no error, and no
        // update once the answer ran out.
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            put(store.as_ref(), b"after the answer").await;
            stream.next().await
        })
        .await
        .expect("the stream ends when the answer runs out");
        assert!(end.is_none(), "a clean end, not {end:?}");
        assert!(crate::metrics::watch_reauthentications() > before);
    }

    #[tokio::test]
    async fn a_watch_of_a_token_without_exp_ends_cleanly_at_the_answers_end() {
        let (broker, _store) = answered_broker(Answers::new(1, None)).await;
        let mut stream = open(&broker, "opaque").await;
        message(stream.next().await);
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends when the answer runs out");
        assert!(end.is_none(), "a clean end, not {end:?}");
    }

    #[tokio::test]
    async fn a_watch_whose_token_expires_ends_unauthenticated() {
        let (broker, _store) = answered_broker(Answers::new(1, Some(1))).await;
        let mut stream = open(&broker, "opaque").await;
        message(stream.next().await);
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends when the token expires")
            .expect("with a status")
            .unwrap_err();
        assert_eq!(end.code(), tonic::Code::Unauthenticated);
        assert!(stream.next().await.is_none(), "the stream ends");
    }

    #[test]
    fn the_fan_out_index_drops_paths_no_stream_watches() {
        let fanout = FanOut::default();
        let path = |n: usize| SecretPath::parse(&format!("shop/p{n}")).unwrap();
        let held: Vec<_> = (0..10).map(|n| fanout.slot(&path(n))).collect();
        // A path's streams share one slot.
        assert!(Arc::ptr_eq(&held[3], &fanout.slot(&path(3))));
        // Thousands of paths watched and left: the index stays bounded.
        for n in 10..10_000 {
            drop(fanout.slot(&path(n)));
        }
        assert!(fanout.indexed() <= FANOUT_SWEEP_AT, "{}", fanout.indexed());
        // The held slots survive every sweep.
        for (n, slot) in held.iter().enumerate() {
            assert!(Arc::ptr_eq(slot, &fanout.slot(&path(n))));
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
