//! The gRPC adapter: authenticates, validates, authorizes, then asks the store.
//!
//! Every RPC follows the same order: identity from the bearer token, paths
//! validated into [`SecretPath`]s, the policy decision, and only then the
//! store. Each decision is logged (without values) on target `coffer::decision`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use coffer_proto::{
    SecretData,
    v1::{self, secret_broker_server::SecretBroker, secret_operator_server::SecretOperator},
};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamMap, wrappers::ReceiverStream, wrappers::WatchStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    audit::{AuditEvent, AuditLog, Outcome},
    auth::{Authenticator, BearerToken, WorkloadIdentity},
    error::{ApiError, item_error},
    path::SecretPath,
    policy::{Capability, Decision, Policy},
    store::{SecretStore, SecretWrite, StoredSecret},
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
    acks: Mutex<HashMap<String, HashMap<WorkloadKey, Ack>>>,
    shutdown: CancellationToken,
    audit: RwLock<Option<Arc<AuditLog>>>,
}

/// One incoming call, as the audit trail names it.
struct Call {
    rpc: &'static str,
    id: String,
    peer: Option<String>,
}

impl Call {
    /// Takes a well-formed `x-request-id` from the caller, or makes one.
    fn of<T>(request: &Request<T>, rpc: &'static str) -> Self {
        let id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
            .map_or_else(new_request_id, str::to_string);
        Self {
            rpc,
            id,
            peer: request.remote_addr().map(|a| a.to_string()),
        }
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
            request_id: &self.id,
            peer: self.peer.as_deref(),
            identity: who,
            rpc: self.rpc,
            path,
            capability,
            version: None,
            decision,
            reason,
            rule: None,
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
struct Allowed {
    capability: Capability,
    rule: String,
}

/// The audit reason for an allowed read that served nothing.
fn read_reason<T>(result: &Result<T, ApiError>) -> &'static str {
    match result {
        Ok(_) => "allowed",
        Err(ApiError::Store(crate::store::StoreError::NotFound))
        | Err(ApiError::Store(crate::store::StoreError::VersionNotFound(_)))
        | Err(ApiError::Store(crate::store::StoreError::VersionDeleted(_))) => "not_found",
        Err(_) => "store_error",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WorkloadKey {
    namespace: String,
    service_account: String,
    pod: String,
}

#[derive(Debug, Clone)]
struct Ack {
    version: u64,
    state: v1::ApplyState,
    at: SystemTime,
}

impl Broker {
    /// A broker over these parts.
    pub fn new(authn: Arc<dyn Authenticator>, policy: Policy, store: Arc<dyn SecretStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                authn,
                policy: watch::Sender::new(Arc::new(policy)),
                store,
                acks: Mutex::default(),
                shutdown: CancellationToken::new(),
                audit: RwLock::new(None),
            }),
        }
    }

    /// Records every decision (and authentication failure) to `audit`.
    pub fn with_audit(self, audit: AuditLog) -> Self {
        *self.inner.audit.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(audit));
        self
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.inner.policy.borrow())
    }

    /// Writes one audit record. Fails closed unless the log is fail-open.
    fn audit(&self, event: &AuditEvent<'_>) -> Result<(), ApiError> {
        let log = self
            .inner
            .audit
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(log) = log else {
            return Ok(());
        };
        match log.record(event) {
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
    fn audit_served(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        allowed: Allowed,
        version: Option<u64>,
        reason: &str,
    ) -> Result<(), ApiError> {
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
        self.audit(&event)
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

    /// Cancelled when the broker shuts down; watch streams end with it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    async fn authenticate<T>(
        &self,
        request: &Request<T>,
        call: &Call,
    ) -> Result<WorkloadIdentity, ApiError> {
        match self.verify_caller(request).await {
            Ok(who) => Ok(who),
            Err(error) => {
                self.audit(&call.event(None, None, None, Outcome::Deny, error.reason()))?;
                Err(error.into())
            }
        }
    }

    async fn verify_caller<T>(
        &self,
        request: &Request<T>,
    ) -> Result<WorkloadIdentity, crate::auth::AuthError> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(crate::auth::AuthError::MissingToken)?
            .to_str()
            .map_err(|_| crate::auth::AuthError::MalformedHeader)?;
        let token = BearerToken::from_header(header)?;
        self.inner.authn.authenticate(&token).await
    }

    /// Decides; a denial is audited here, an allowance by the caller once it
    /// knows what it served ([`Broker::audit_served`]).
    fn authorize(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
    ) -> Result<Allowed, ApiError> {
        let decision = self.inner.policy.borrow().decide(who, path, capability);
        log_decision(who, path, capability, call.rpc, &decision);
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
                self.audit(&event)?;
                Err(ApiError::PermissionDenied)
            }
        }
    }

    async fn read(&self, path: &SecretPath, version: Option<u64>) -> Result<v1::Secret, ApiError> {
        let stored = self.inner.store.get(path.base(), version).await?;
        to_wire(path, stored)
    }

    fn record_acks(
        &self,
        who: &WorkloadIdentity,
        applied: Vec<v1::AppliedVersion>,
    ) -> Result<(), ApiError> {
        let key = WorkloadKey {
            namespace: who.namespace.clone(),
            service_account: who.service_account.clone(),
            pod: who.pod_name.clone().unwrap_or_default(),
        };
        let mut acks = self.inner.acks.lock().unwrap_or_else(|p| p.into_inner());
        for item in applied {
            let path = SecretPath::parse(&item.path)?;
            let state = item.state();
            tracing::info!(
                target: "coffer::ack",
                namespace = %key.namespace,
                service_account = %key.service_account,
                pod = %key.pod,
                path = %path,
                version = item.version,
                state = state.as_str_name(),
                reason = %item.reason.chars().take(128).collect::<String>(),
                "workload acknowledged a version"
            );
            acks.entry(path.to_string()).or_default().insert(
                key.clone(),
                Ack {
                    version: item.version,
                    state,
                    at: SystemTime::now(),
                },
            );
        }
        Ok(())
    }
}

fn log_decision(
    who: &WorkloadIdentity,
    path: &SecretPath,
    capability: Capability,
    rpc: &'static str,
    decision: &Decision,
) {
    let (allowed, rule) = (decision.is_allowed(), decision.rule().unwrap_or(""));
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

type WatchResponseStream = ReceiverStream<Result<v1::WatchSecretsResponse, Status>>;

#[tonic::async_trait]
impl SecretBroker for Broker {
    type WatchSecretsStream = WatchResponseStream;

    #[tracing::instrument(skip_all, fields(rpc = "GetSecret"))]
    async fn get_secret(
        &self,
        request: Request<v1::GetSecretRequest>,
    ) -> Result<Response<v1::GetSecretResponse>, Status> {
        let call = Call::of(&request, "GetSecret");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        let path = SecretPath::parse(&req.path).map_err(ApiError::from)?;
        let allowed = self.authorize(&call, &who, &path, Capability::Read)?;
        let result = self.read(&path, req.version).await;
        let version = result.as_ref().ok().map(|s| s.version);
        self.audit_served(&call, &who, &path, allowed, version, read_reason(&result))?;
        let secret = result?;
        Ok(Response::new(v1::GetSecretResponse {
            secret: Some(secret),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetSecrets"))]
    async fn get_secrets(
        &self,
        request: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        let call = Call::of(&request, "GetSecrets");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        if req.requests.is_empty() || req.requests.len() > MAX_PATHS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "between 1 and {MAX_PATHS_PER_CALL} paths per call"
            ))
            .into());
        }
        let reads = req.requests.into_iter().map(|item| {
            let (who, call) = (&who, &call);
            async move {
                let result = async {
                    let path = SecretPath::parse(&item.path)?;
                    let allowed = self.authorize(call, who, &path, Capability::Read)?;
                    let result = self.read(&path, item.version).await;
                    let version = result.as_ref().ok().map(|s| s.version);
                    self.audit_served(call, who, &path, allowed, version, read_reason(&result))?;
                    result
                }
                .await;
                v1::SecretResult {
                    result: Some(match result {
                        Ok(secret) => v1::secret_result::Result::Secret(secret),
                        Err(e) => v1::secret_result::Result::Error(item_error(e)),
                    }),
                    path: item.path,
                }
            }
        });
        let results = futures::future::join_all(reads).await;
        Ok(Response::new(v1::GetSecretsResponse { results }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "WatchSecrets"))]
    async fn watch_secrets(
        &self,
        request: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        let call = Call::of(&request, "WatchSecrets");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        let paths = parse_paths(req.paths.iter().map(String::as_str))?;
        // Subscribe before deciding, so a policy change that lands between
        // the decision and the watch loop is still seen by the loop.
        let mut policy = self.inner.policy.subscribe();
        let mut grants = Vec::with_capacity(paths.len());
        for path in &paths {
            let read = self.authorize(&call, &who, path, Capability::Read)?;
            grants.push((read, self.authorize(&call, &who, path, Capability::Watch)?));
        }

        // Subscribe before reading the snapshot, so no change can fall
        // between the two.
        let mut changes = StreamMap::new();
        for (index, path) in paths.iter().enumerate() {
            changes.insert(
                index,
                WatchStream::from_changes(self.inner.store.subscribe(path.base())),
            );
        }
        let mut sent = Vec::with_capacity(paths.len());
        let mut snapshot = Vec::with_capacity(paths.len());
        for (path, (read, watch)) in paths.iter().zip(grants) {
            let result = self.read(path, None).await;
            let version = result.as_ref().ok().map(|s| s.version);
            let reason = read_reason(&result);
            self.audit_served(&call, &who, path, read, version, reason)?;
            self.audit_served(&call, &who, path, watch, version, reason)?;
            let secret = result?;
            sent.push(secret.version);
            snapshot.push(secret);
        }

        let (tx, rx) = mpsc::channel(16);
        let first = v1::WatchSecretsResponse {
            kind: v1::WatchEventKind::Snapshot as i32,
            secrets: snapshot,
        };
        // The channel is new and has room: this cannot fail.
        let _ = tx.try_send(Ok(first));

        let broker = self.clone();
        tokio::spawn(async move {
            let shutdown = broker.inner.shutdown.clone();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(Err(ApiError::ShuttingDown.into())).await;
                        break;
                    }
                    _ = tx.closed() => break,
                    Ok(()) = policy.changed() => {
                        let current = Arc::clone(&policy.borrow_and_update());
                        if let Err(status) = broker.recheck_watch(&call, &who, &current, paths.iter()) {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    Some((index, version)) = changes.next() => {
                        if version <= sent[index] {
                            continue;
                        }
                        let path = &paths[index];
                        let message = match broker.serve_update(&call, &who, path, version).await {
                            Ok(secret) => {
                                sent[index] = secret.version;
                                Ok(v1::WatchSecretsResponse {
                                    kind: v1::WatchEventKind::Update as i32,
                                    secrets: vec![secret],
                                })
                            }
                            Err(e) => Err(Status::from(e)),
                        };
                        let failed = message.is_err();
                        if tx.send(message).await.is_err() || failed {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(skip_all, fields(rpc = "AckSecrets"))]
    async fn ack_secrets(
        &self,
        request: Request<v1::AckSecretsRequest>,
    ) -> Result<Response<v1::AckSecretsResponse>, Status> {
        let call = Call::of(&request, "AckSecrets");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        if req.applied.len() > MAX_PATHS_PER_CALL {
            return Err(ApiError::InvalidArgument("too many acknowledgements".into()).into());
        }
        self.record_acks(&who, req.applied)?;
        Ok(Response::new(v1::AckSecretsResponse {}))
    }
}

impl Broker {
    /// After a policy change: is every path of an open watch still readable
    /// and watchable? A revocation is audited and ends the watch.
    fn recheck_watch<'a>(
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
                return Err(match self.audit(&event) {
                    Ok(()) => ApiError::PermissionDenied.into(),
                    Err(e) => e.into(),
                });
            }
        }
        Ok(())
    }

    /// Reads one watched path's new version, deciding again under the
    /// current policy and auditing what is sent.
    async fn serve_update(
        &self,
        call: &Call,
        who: &WorkloadIdentity,
        path: &SecretPath,
        version: u64,
    ) -> Result<v1::Secret, ApiError> {
        let watch = self.authorize(call, who, path, Capability::Watch)?;
        let result = self.read(path, Some(version)).await;
        let served = result.as_ref().ok().map(|s| s.version);
        self.audit_served(call, who, path, watch, served, read_reason(&result))?;
        result
    }

    async fn operator_path<T>(
        &self,
        request: &Request<T>,
        raw_path: &str,
        capability: Capability,
        rpc: &'static str,
    ) -> Result<SecretPath, ApiError> {
        let call = Call::of(request, rpc);
        let who = self.authenticate(request, &call).await?;
        let path = SecretPath::parse(raw_path)?;
        if path.key().is_some() {
            return Err(ApiError::InvalidArgument(
                "operator calls take a path without '#key'".into(),
            ));
        }
        // Write-side calls are audited before they act, so nothing changes
        // that could not be recorded.
        let allowed = self.authorize(&call, &who, &path, capability)?;
        self.audit_served(&call, &who, &path, allowed, None, "allowed")?;
        Ok(path)
    }
}

#[tonic::async_trait]
impl SecretOperator for Broker {
    #[tracing::instrument(skip_all, fields(rpc = "PutSecret"))]
    async fn put_secret(
        &self,
        request: Request<v1::PutSecretRequest>,
    ) -> Result<Response<v1::PutSecretResponse>, Status> {
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::Write,
                "PutSecret",
            )
            .await?;
        let mut req = request.into_inner();
        let data = req
            .value
            .take()
            .ok_or_else(|| ApiError::InvalidArgument("value is required".into()))
            .and_then(|v| {
                SecretData::try_from(v)
                    .map_err(|_| ApiError::InvalidArgument("value is empty".into()))
            })?;
        let write = SecretWrite {
            data,
            content_type: std::mem::take(&mut req.content_type),
            labels: std::mem::take(&mut req.labels).into_iter().collect(),
            cas: req.cas,
        };
        let version = self
            .inner
            .store
            .put(path.base(), write)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, version, "secret written");
        Ok(Response::new(v1::PutSecretResponse { version }))
    }

    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        self.operator_path(
            &request,
            &request.get_ref().path,
            Capability::Rotate,
            "RotateSecret",
        )
        .await?;
        Err(ApiError::Unimplemented("RotateSecret").into())
    }

    #[tracing::instrument(skip_all, fields(rpc = "RollbackSecret"))]
    async fn rollback_secret(
        &self,
        request: Request<v1::RollbackSecretRequest>,
    ) -> Result<Response<v1::RollbackSecretResponse>, Status> {
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::Rollback,
                "RollbackSecret",
            )
            .await?;
        let to = request.get_ref().to_version;
        let version = self
            .inner
            .store
            .rollback(path.base(), to)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, from = to, version, "secret rolled back");
        Ok(Response::new(v1::RollbackSecretResponse { version }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListVersions"))]
    async fn list_versions(
        &self,
        request: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::List,
                "ListVersions",
            )
            .await?;
        let (current_version, versions) = self
            .inner
            .store
            .versions(path.base())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::ListVersionsResponse {
            current_version,
            versions: versions
                .into_iter()
                .map(|v| v1::VersionInfo {
                    version: v.version,
                    created_at: Some(v.created_at.into()),
                    deleted: v.deleted,
                    destroyed: v.destroyed,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "RotationStatus"))]
    async fn rotation_status(
        &self,
        request: Request<v1::RotationStatusRequest>,
    ) -> Result<Response<v1::RotationStatusResponse>, Status> {
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::Status,
                "RotationStatus",
            )
            .await?;
        let current_version = match self.inner.store.versions(path.base()).await {
            Ok((current, _)) => current,
            Err(crate::store::StoreError::NotFound) => 0,
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let acks = self.inner.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut workloads: Vec<v1::WorkloadVersion> = acks
            .iter()
            .filter(|(acked_path, _)| {
                // `app/db#key` acknowledgements count for `app/db`.
                acked_path.split('#').next() == Some(path.base())
            })
            .flat_map(|(_, by_workload)| by_workload.iter())
            .map(|(k, a)| v1::WorkloadVersion {
                namespace: k.namespace.clone(),
                service_account: k.service_account.clone(),
                pod: k.pod.clone(),
                version: a.version,
                state: a.state as i32,
                acknowledged_at: Some(a.at.into()),
            })
            .collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        Ok(Response::new(v1::RotationStatusResponse {
            current_version,
            workloads,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use coffer_proto::SecretBytes;

    use super::*;
    use crate::{
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        store::dev::DevStore,
    };

    const ISS: &str = "https://issuer.test";
    const READS: &str = "rules:\n  - name: web-reads\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [\"shop/*\"]\n    capabilities: [read, watch]\n";

    async fn broker(audit: &std::path::Path) -> (Broker, String, Arc<DevStore>) {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(DevStore::in_memory());
        store
            .put(
                "shop/db",
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(&b"v1"[..])), ""),
            )
            .await
            .unwrap();
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
        let mut stream = broker
            .watch_secrets(watch_request(&token))
            .await
            .unwrap()
            .into_inner();
        let snapshot = stream.next().await.unwrap().unwrap();
        assert_eq!(snapshot.secrets[0].version, 1);

        // An update while allowed is served and audited with its version.
        store
            .put(
                "shop/db",
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(&b"v2"[..])), ""),
            )
            .await
            .unwrap();
        let update = stream.next().await.unwrap().unwrap();
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
    async fn set_policy_keeps_a_watch_that_kept_access() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, token, store) = broker(&dir.path().join("audit.log")).await;
        let mut stream = broker
            .watch_secrets(watch_request(&token))
            .await
            .unwrap()
            .into_inner();
        stream.next().await.unwrap().unwrap();
        broker.set_policy(Policy::from_yaml(READS).unwrap());
        store
            .put(
                "shop/db",
                SecretWrite::new(SecretData::Bytes(SecretBytes::from(&b"v2"[..])), ""),
            )
            .await
            .unwrap();
        // The next message is the update, not a revocation.
        let update = stream.next().await.unwrap().unwrap();
        assert_eq!(update.secrets[0].version, 2);
    }
}
