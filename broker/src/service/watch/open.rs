//! Opening a watch: authentication (and when it ends), the grants, the
//! bound on streams, the snapshot; and the checks again after a policy
//! change.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use coffer_proto::v1;
use coffer_runtime::Backoff;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use super::state::{
    Changes, Phase, RETRY_FIRST, RETRY_MAX, Watch, WatchCall, WatchResponseStream, Watched,
};
use crate::service::{Broker, Call, parse_paths, read_reason};
use crate::{
    audit::Outcome,
    auth::WorkloadIdentity,
    error::ApiError,
    path::SecretPath,
    policy::{Capability, Policy},
};

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
    pub(in crate::service) async fn open_watch(
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
                        .subscribe_held(&crate::service::holder(&who), path.name()),
                )
            })
            .collect();
        let changes = Changes::new(subscriptions);
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
                .shared(path.name())
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
            retry: Backoff::new(RETRY_FIRST, RETRY_MAX),
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
    pub(super) async fn recheck_watch<'a>(
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
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use futures::StreamExt;

    use super::*;
    use crate::service::watch::testing::*;

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
}
