//! The gRPC adapter: authenticates, validates, authorizes, then asks the store.
//!
//! Every RPC follows the same order: identity from the bearer token, paths
//! validated into [`SecretPath`]s, the policy decision, and only then the
//! store. Each decision is logged (without values) on target `coffer::decision`:
//! every one at `debug`; at `info` only denials and a summary of the counts
//! per RPC every minute (the audit trail is the per-request record).
//!
//! One [`Broker`] serves both gRPC services; each lives in its own file:
//! `workload.rs` (`SecretBroker`: Get, Watch, Ack), `stream.rs` (the task
//! behind each watch stream), `acks.rs` (the acknowledgement table) and
//! `operator.rs` (`SecretOperator`).

mod acks;
mod leases;
mod limits;
mod list;
mod operator;

pub use leases::MAX_LEASES_LISTED;

pub use acks::AckLimits;
mod stream;
mod workload;

use std::sync::{Arc, RwLock};

use coffer_proto::{SecretData, v1};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Request;

pub use limits::{
    BYTES_PER_WATCH, DEFAULT_MAX_WATCHES, Limits, cgroup_memory_limit, default_max_watches,
    max_watches_for_memory,
};

use crate::{
    audit::{AuditEvent, AuditLog, Outcome},
    auth::{Authenticator, BearerToken, Verified, WorkloadIdentity},
    error::ApiError,
    path::SecretPath,
    policy::{Capability, Decision, Policy},
    store::{SecretStore, StoredSecret},
};

/// The most paths one GetSecrets or WatchSecrets call may name.
pub const MAX_PATHS_PER_CALL: usize = 256;

/// The broker: cheap to clone, all clones share state.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    authn: Arc<dyn Authenticator>,
    policy: watch::Sender<Arc<Policy>>,
    store: Arc<dyn SecretStore>,
    acks: acks::AckTable,
    shutdown: CancellationToken,
    /// Set once, before serving: reading it on every request takes no
    /// lock.
    audit: std::sync::OnceLock<AuditLog>,
    limits: RwLock<Limits>,
    watches: limits::WatchCounts,
    peers: std::sync::OnceLock<crate::peers::Peers>,
    decisions: DecisionCounts,
    fanout: stream::FanOut,
}

/// One incoming call, as the audit trail names it. The request id and the
/// peer's text are made only when a record is written: with the audit trail
/// off, an allowed request allocates neither.
struct Call {
    rpc: &'static str,
    given_id: Option<String>,
    id: std::sync::OnceLock<String>,
    remote: Option<std::net::SocketAddr>,
    peer: std::sync::OnceLock<Option<String>>,
}

impl Call {
    /// Takes a well-formed `x-request-id` from the caller, or makes one later.
    fn of<T>(request: &Request<T>, rpc: &'static str) -> Self {
        let given_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
            .map(str::to_string);
        Self {
            rpc,
            given_id,
            id: std::sync::OnceLock::new(),
            remote: request.remote_addr(),
            peer: std::sync::OnceLock::new(),
        }
    }

    fn id(&self) -> &str {
        self.id
            .get_or_init(|| self.given_id.clone().unwrap_or_else(new_request_id))
    }

    fn peer(&self) -> Option<&str> {
        self.peer
            .get_or_init(|| self.remote.map(|a| a.to_string()))
            .as_deref()
    }

    fn event<'a>(
        &'a self,
        who: Option<&'a WorkloadIdentity>,
        path: Option<&'a str>,
        capability: Option<Capability>,
        decision: Outcome,
        reason: &'a str,
    ) -> AuditEvent<'a> {
        AuditEvent {
            request_id: self.id(),
            peer: self.peer(),
            identity: who,
            rpc: self.rpc,
            path,
            capability,
            version: None,
            decision,
            reason,
            rule: None,
            lease_id: None,
            actor: None,
            owner: None,
        }
    }
}

fn new_request_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // A failing system RNG leaves zeros: the id is for correlation only.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    crate::audit::hex(&bytes)
}

/// An allow decision whose audit record is still to be written, once the
/// version served is known.
#[must_use]
#[derive(Clone)]
struct Allowed {
    capability: Capability,
    /// Shared: a watch reuses its grant for every update it sends.
    rule: Arc<str>,
}

/// The audit reason for an allowed read that served nothing.
fn read_reason<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "allowed",
        Err(ApiError::Store(crate::store::StoreError::NotFound))
        | Err(ApiError::Store(crate::store::StoreError::VersionNotFound(_)))
        | Err(ApiError::Store(crate::store::StoreError::VersionDeleted(_))) => "not_found",
        Err(ApiError::Store(crate::store::StoreError::Throttled)) => "throttled",
        Err(_) => "store_error",
    }
}
impl Broker {
    /// A broker over these parts.
    pub fn new(authn: Arc<dyn Authenticator>, policy: Policy, store: Arc<dyn SecretStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                authn,
                policy: watch::Sender::new(Arc::new(policy)),
                store,
                acks: acks::AckTable::default(),
                shutdown: CancellationToken::new(),
                audit: std::sync::OnceLock::new(),
                limits: RwLock::new(Limits::default()),
                watches: limits::WatchCounts::default(),
                peers: std::sync::OnceLock::new(),
                decisions: DecisionCounts::default(),
                fanout: stream::FanOut::default(),
            }),
        }
    }

    /// Records every decision (and authentication failure) to `audit`.
    /// Set it once, before serving (a second trail is refused with a
    /// warning): a watch stream learns at its opening whether its updates
    /// are audited.
    pub fn with_audit(self, audit: AuditLog) -> Self {
        if self.inner.audit.set(audit).is_err() {
            tracing::warn!("an audit trail was already set; keeping the first");
            return self;
        }
        self.audit_lease_actions();
        self
    }

    /// The token issuers the broker trusts (a policy must fit them: see
    /// [`Policy::check_issuers`]).
    pub fn issuers(&self) -> Vec<String> {
        self.inner.authn.issuers()
    }

    fn audit_log(&self) -> Option<&AuditLog> {
        self.inner.audit.get()
    }

    /// Writes what the audit trail still holds in memory (aggregated
    /// failure counts); call at shutdown.
    pub async fn flush_audit(&self) {
        if let Some(log) = self.audit_log()
            && let Err(error) = log.flush().await
        {
            tracing::error!(%error, "audit trail not flushed at shutdown");
        }
    }

    /// Bounds the rollout table behind `RotationStatus` (see [`AckLimits`]).
    pub fn with_ack_limits(self, limits: AckLimits) -> Self {
        self.inner.acks.set_limits(limits);
        self
    }

    /// Tells `peers` of every write and merges their rollout answers (see
    /// [`crate::peers`]). Set once, before serving.
    pub fn with_peers(self, peers: crate::peers::Peers) -> Self {
        if self.inner.peers.set(peers).is_err() {
            tracing::warn!("peers were already set; keeping the first set");
        }
        self
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.policy.borrow())
    }

    /// Writes one audit record. Fails closed unless the log is fail-open.
    async fn audit(&self, event: &AuditEvent<'_>) -> Result<(), ApiError> {
        self.write_audit(event, false).await
    }

    /// Writes (or counts, see [`AuditLog::record_auth_failure`]) the record
    /// of a failed authentication. Fails closed like [`Broker::audit`].
    async fn audit_auth_failure(&self, event: &AuditEvent<'_>) -> Result<(), ApiError> {
        self.write_audit(event, true).await
    }

    async fn write_audit(
        &self,
        event: &AuditEvent<'_>,
        auth_failure: bool,
    ) -> Result<(), ApiError> {
        let Some(log) = self.audit_log() else {
            return Ok(());
        };
        // The write happens on the audit writer thread; this only awaits it.
        let result = if auth_failure {
            log.record_auth_failure(event).await
        } else {
            log.record(event).await
        };
        match result {
            Ok(()) => Ok(()),
            Err(error) if log.is_fail_open() => {
                tracing::error!(%error, "audit record lost (audit is fail-open)");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "audit record not written: refusing the request");
                Err(ApiError::AuditUnavailable)
            }
        }
    }

    /// Records what an allowed request was served.
    async fn audit_served(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        allowed: &Allowed,
        version: Option<u64>,
        reason: &str,
    ) -> Result<(), ApiError> {
        if self.audit_log().is_none() {
            // No trail: nothing to format.
            return Ok(());
        }
        // A leased path's record names the lease the credential came from.
        let lease_id =
            version.and_then(|v| self.inner.store.lease_of(&holder(who), path.base(), v));
        let path = path.to_string();
        let mut event = call.event(
            Some(who),
            Some(&path),
            Some(allowed.capability),
            Outcome::Allow,
            reason,
        );
        event.version = version;
        event.rule = Some(&allowed.rule);
        event.lease_id = lease_id.as_deref();
        self.audit(&event).await
    }

    /// Writes the broker's own lease actions (issue, failed renewal,
    /// revoke) to the audit trail as records whose actor is the broker.
    fn audit_lease_actions(&self) {
        let Some(mut events) = self.inner.store.lease_events() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime: the broker's lease actions are not audited");
            return;
        };
        let broker = self.clone();
        runtime.spawn(async move {
            while let Some(lease) = events.recv().await {
                let request_id = new_request_id();
                let event = AuditEvent {
                    request_id: &request_id,
                    peer: None,
                    identity: None,
                    rpc: lease.action.as_str(),
                    path: Some(&lease.path),
                    capability: None,
                    version: Some(lease.version),
                    decision: Outcome::Allow,
                    reason: lease.reason,
                    rule: None,
                    lease_id: Some(&lease.lease_id),
                    actor: Some("broker"),
                    owner: Some(&lease.owner),
                };
                // Refusing has no caller to refuse: a lost record is logged.
                if broker.audit(&event).await.is_err() {
                    tracing::error!(lease_id = %lease.lease_id, "lease action not audited");
                }
            }
        });
    }

    /// Replaces the policy. New requests use it at once; open watches are
    /// checked again and closed if they lost access.
    pub fn set_policy(&self, policy: Policy) {
        self.inner.policy.send_replace(Arc::new(policy));
    }

    /// The store's health, if it reports one (see [`SecretStore::health`]).
    pub fn store_health(&self) -> Option<watch::Receiver<bool>> {
        self.inner.store.health()
    }

    /// Cancelled when the broker shuts down (see [`Broker::shut_down`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Shuts down: cancels [`Broker::shutdown_token`] and ends every watch
    /// stream with `UNAVAILABLE`. Streams wait on the policy channel, which
    /// is bumped here after the cancel, so each wakes and sees it.
    pub fn shut_down(&self) {
        self.inner.shutdown.cancel();
        self.inner.policy.send_modify(|_| {});
    }

    async fn authenticate<T>(&self, request: &Request<T>, call: &Call) -> Result<Caller, ApiError> {
        self.authenticate_until(request, call).await.map(Caller)
    }

    /// [`Self::authenticate`], also saying until when the verification
    /// holds: a watch stream ends then.
    async fn authenticate_until<T>(
        &self,
        request: &Request<T>,
        call: &Call,
    ) -> Result<Arc<Verified>, ApiError> {
        match self.verify_caller(request).await {
            Ok(who) => Ok(who),
            Err(error) => {
                self.audit_auth_failure(&call.event(
                    None,
                    None,
                    None,
                    Outcome::Deny,
                    error.reason(),
                ))
                .await?;
                Err(error.into())
            }
        }
    }

    async fn verify_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Arc<Verified>, crate::auth::AuthError> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(crate::auth::AuthError::MissingToken)?
            .to_str()
            .map_err(|_| crate::auth::AuthError::MalformedHeader)?;
        let token = BearerToken::from_header(header)?;
        self.inner.authn.authenticate_shared(&token).await
    }

    /// Decides; a denial is audited here, an allowance by the caller once it
    /// knows what it served ([`Broker::audit_served`]).
    async fn authorize(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
    ) -> Result<Allowed, ApiError> {
        let decision = self.inner.policy.borrow().decide(who, path, capability);
        log_decision(
            &self.inner.decisions,
            who,
            path,
            capability,
            call.rpc,
            &decision,
        );
        match decision {
            Decision::Allow { rule } => Ok(Allowed { capability, rule }),
            denied => {
                let path = path.to_string();
                let mut event = call.event(
                    Some(who),
                    Some(&path),
                    Some(capability),
                    Outcome::Deny,
                    denied.reason(),
                );
                event.rule = denied.rule();
                self.audit(&event).await?;
                Err(ApiError::PermissionDenied)
            }
        }
    }

    /// Reads for `who`, who is charged its share of the store's backend.
    async fn read(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<v1::Secret, ApiError> {
        let store = &self.inner.store;
        // Only a leased path is issued per holder; every other read needs
        // just the tenant it is charged to (no copies of the identity).
        let stored = if store.shared(path.base()) {
            store
                .get_for(&limits::tenant(who), path.base(), version)
                .await?
        } else {
            store.get_held(&holder(who), path.base(), version).await?
        };
        to_wire(path, stored)
    }
}

/// A verified caller: the authenticator's answer, shared with its cache
/// rather than copied for each request.
pub(super) struct Caller(Arc<Verified>);

impl std::ops::Deref for Caller {
    type Target = WorkloadIdentity;

    fn deref(&self) -> &WorkloadIdentity {
        &self.0.identity
    }
}

/// The caller as a store sees it: its tenant and pod (leased secrets are
/// issued per pod).
pub(super) fn holder(who: &WorkloadIdentity) -> crate::store::Holder {
    crate::store::Holder {
        tenant: limits::tenant(who),
        pod: who.pod_uid.clone().or_else(|| who.pod_name.clone()),
        namespace: who.namespace.clone(),
        service_account: who.service_account.clone(),
        issuer: who.issuer.clone(),
        pod_name: who.pod_name.clone(),
        pod_uid: who.pod_uid.clone(),
    }
}

/// Logs one decision: every one at `debug`, denials at `info`; allowances
/// are counted and summarized at `info` (see [`DecisionCounts`]).
fn log_decision(
    counts: &DecisionCounts,
    who: &WorkloadIdentity,
    path: &SecretPath,
    capability: Capability,
    rpc: &'static str,
    decision: &Decision,
) {
    let allowed = decision.is_allowed();
    counts.count(rpc, allowed);
    let level_enabled = if allowed {
        tracing::enabled!(target: "coffer::decision", tracing::Level::DEBUG)
    } else {
        tracing::enabled!(target: "coffer::decision", tracing::Level::INFO)
    };
    if !level_enabled {
        return;
    }
    let rule = decision.rule().unwrap_or("");
    if allowed {
        tracing::debug!(
            target: "coffer::decision",
            rpc,
            namespace = %who.namespace,
            service_account = %who.service_account,
            pod = who.pod_name.as_deref().unwrap_or(""),
            path = %path,
            capability = capability.as_str(),
            allowed,
            rule,
            "policy decision"
        );
    } else {
        tracing::info!(
            target: "coffer::decision",
            rpc,
            namespace = %who.namespace,
            service_account = %who.service_account,
            pod = who.pod_name.as_deref().unwrap_or(""),
            path = %path,
            capability = capability.as_str(),
            allowed,
            rule,
            "policy decision"
        );
    }
}

/// How often the allowed/denied counts are logged at `info`.
pub const DECISION_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The RPCs whose decisions are counted; any other name counts as `other`.
const COUNTED_RPCS: [&str; 15] = [
    "GetSecret",
    "GetSecrets",
    "WatchSecrets",
    "AckSecrets",
    "PutSecret",
    "RotateSecret",
    "RollbackSecret",
    "ListVersions",
    "RotationStatus",
    "DeleteVersions",
    "UndeleteVersions",
    "DestroyVersions",
    "ListSecrets",
    "NotifyChanged",
    "other",
];

/// Allowed and denied decisions per RPC since the last summary: lock-free
/// counters on the hot path, one `info` line per RPC with decisions when a
/// summary is due. The summary is written by the first decision after
/// [`DECISION_SUMMARY_EVERY`] has passed (an idle broker has nothing to say).
pub(crate) struct DecisionCounts {
    allowed: [std::sync::atomic::AtomicU64; COUNTED_RPCS.len()],
    denied: [std::sync::atomic::AtomicU64; COUNTED_RPCS.len()],
    since: std::time::Instant,
    /// Milliseconds after `since` when the next summary is due.
    next_due_ms: std::sync::atomic::AtomicU64,
    every: std::time::Duration,
}

impl Default for DecisionCounts {
    fn default() -> Self {
        Self::every(DECISION_SUMMARY_EVERY)
    }
}

impl DecisionCounts {
    fn every(every: std::time::Duration) -> Self {
        Self {
            allowed: Default::default(),
            denied: Default::default(),
            since: std::time::Instant::now(),
            next_due_ms: std::sync::atomic::AtomicU64::new(duration_ms(every)),
            every,
        }
    }

    fn count(&self, rpc: &'static str, allowed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let index = COUNTED_RPCS
            .iter()
            .position(|name| *name == rpc)
            .unwrap_or(COUNTED_RPCS.len() - 1);
        let counter = if allowed {
            &self.allowed[index]
        } else {
            &self.denied[index]
        };
        counter.fetch_add(1, Relaxed);
        let now = duration_ms(self.since.elapsed());
        let due = self.next_due_ms.load(Relaxed);
        // One caller wins the summary; the others carry on counting.
        if now >= due
            && self
                .next_due_ms
                .compare_exchange(due, now + duration_ms(self.every), Relaxed, Relaxed)
                .is_ok()
        {
            self.summarize();
        }
    }

    /// Logs and resets the counts: one line per RPC that had decisions.
    fn summarize(&self) -> Vec<(&'static str, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut lines = Vec::new();
        for (index, rpc) in COUNTED_RPCS.iter().enumerate() {
            let allowed = self.allowed[index].swap(0, Relaxed);
            let denied = self.denied[index].swap(0, Relaxed);
            if allowed + denied > 0 {
                tracing::info!(
                    target: "coffer::decision",
                    rpc,
                    allowed,
                    denied,
                    period_s = self.every.as_secs(),
                    "policy decisions summary"
                );
                lines.push((*rpc, allowed, denied));
            }
        }
        lines
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds the wire form, selecting one key of a map when the path asks.
fn to_wire(path: &SecretPath, stored: StoredSecret) -> Result<v1::Secret, ApiError> {
    let data = match path.key() {
        None => stored.data,
        Some(key) => SecretData::Bytes(
            stored
                .data
                .key(key)
                .cloned()
                .ok_or(crate::store::StoreError::NotFound)?,
        ),
    };
    Ok(v1::Secret {
        path: path.to_string(),
        version: stored.version,
        content_type: stored.content_type,
        value: Some(data.into()),
        metadata: Some(v1::SecretMetadata {
            created_at: Some(stored.created_at.into()),
            ttl_hint: stored
                .ttl_hint
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            labels: stored.labels.into_iter().collect(),
        }),
    })
}

/// A folder or path prefix as `ListSecrets` and `ListLeases` take it:
/// trailing slashes dropped, empty for the root, otherwise a valid path
/// without a `#key` (`what` names it in the error).
fn parse_folder(raw: &str, what: &str) -> Result<String, ApiError> {
    let folder = raw.trim_end_matches('/');
    if !folder.is_empty() && SecretPath::parse(folder)?.key().is_some() {
        return Err(ApiError::InvalidArgument(format!("{what} has no '#key'")));
    }
    Ok(folder.to_string())
}

fn parse_paths<'a>(
    raw: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<SecretPath>, ApiError> {
    if raw.len() == 0 {
        return Err(ApiError::InvalidArgument("no paths given".into()));
    }
    if raw.len() > MAX_PATHS_PER_CALL {
        return Err(ApiError::InvalidArgument(format!(
            "at most {MAX_PATHS_PER_CALL} paths per call"
        )));
    }
    let mut paths: Vec<SecretPath> = raw.map(SecretPath::parse).collect::<Result<_, _>>()?;
    paths.sort();
    paths.dedup();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_drops_trailing_slashes_and_refuses_a_key_or_a_bad_path() {
        assert_eq!(parse_folder("", "a folder").unwrap(), "");
        assert_eq!(parse_folder("/", "a folder").unwrap(), "");
        assert_eq!(parse_folder("shop/db//", "a folder").unwrap(), "shop/db");
        let keyed = parse_folder("shop/db#password", "a path prefix").unwrap_err();
        assert!(
            matches!(&keyed, ApiError::InvalidArgument(m) if m == "a path prefix has no '#key'"),
            "{keyed:?}"
        );
        assert!(matches!(
            parse_folder("shop/../db", "a folder"),
            Err(ApiError::InvalidPath(_))
        ));
    }

    #[test]
    fn decision_summary_counts_per_rpc_and_resets() {
        let counts = DecisionCounts::every(std::time::Duration::from_secs(3600));
        for _ in 0..3 {
            counts.count("GetSecret", true);
        }
        counts.count("GetSecret", false);
        counts.count("PutSecret", false);
        counts.count("NoSuchRpc", true);
        let lines = counts.summarize();
        assert_eq!(
            lines,
            vec![("GetSecret", 3, 1), ("PutSecret", 0, 1), ("other", 1, 0)]
        );
        assert!(counts.summarize().is_empty(), "the counts reset");
    }

    #[test]
    fn decision_summary_is_due_once_per_period() {
        let counts = DecisionCounts::every(std::time::Duration::ZERO);
        counts.count("GetSecret", true);
        // The summary ran inside count(): nothing is left to report.
        assert!(counts.summarize().is_empty());
    }
}
