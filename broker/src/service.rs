//! The gRPC adapter: authenticates, validates, authorizes, then asks the store.
//!
//! Every RPC follows the same order: identity from the bearer token, paths
//! validated into [`SecretPath`]s, the policy decision, and only then the
//! store. Each decision is logged (without values) on target `coffer::decision`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
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
            }),
        }
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

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<WorkloadIdentity, ApiError> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(crate::auth::AuthError::MissingToken)?
            .to_str()
            .map_err(|_| crate::auth::AuthError::MalformedHeader)?;
        let token = BearerToken::from_header(header)?;
        Ok(self.inner.authn.authenticate(&token).await?)
    }

    fn authorize(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
        rpc: &'static str,
    ) -> Result<(), ApiError> {
        let decision = self.inner.policy.borrow().decide(who, path, capability);
        log_decision(who, path, capability, rpc, &decision);
        if decision.is_allowed() {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied)
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
    let (allowed, rule) = match decision {
        Decision::Allow { rule } => (true, rule.as_str()),
        Decision::Deny => (false, ""),
    };
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
        let who = self.authenticate(&request).await?;
        let req = request.into_inner();
        let path = SecretPath::parse(&req.path).map_err(ApiError::from)?;
        self.authorize(&who, &path, Capability::Read, "GetSecret")?;
        let secret = self.read(&path, req.version).await?;
        Ok(Response::new(v1::GetSecretResponse {
            secret: Some(secret),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "GetSecrets"))]
    async fn get_secrets(
        &self,
        request: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        let who = self.authenticate(&request).await?;
        let req = request.into_inner();
        if req.requests.is_empty() || req.requests.len() > MAX_PATHS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "between 1 and {MAX_PATHS_PER_CALL} paths per call"
            ))
            .into());
        }
        let reads = req.requests.into_iter().map(|item| {
            let who = &who;
            async move {
                let result = async {
                    let path = SecretPath::parse(&item.path)?;
                    self.authorize(who, &path, Capability::Read, "GetSecrets")?;
                    self.read(&path, item.version).await
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
        let who = self.authenticate(&request).await?;
        let req = request.into_inner();
        let paths = parse_paths(req.paths.iter().map(String::as_str))?;
        for path in &paths {
            self.authorize(&who, path, Capability::Read, "WatchSecrets")?;
            self.authorize(&who, path, Capability::Watch, "WatchSecrets")?;
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
        for path in &paths {
            let secret = self.read(path, None).await?;
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
            let mut policy = broker.inner.policy.subscribe();
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
                        let still_allowed = paths.iter().all(|p| {
                            current.decide(&who, p, Capability::Read).is_allowed()
                                && current.decide(&who, p, Capability::Watch).is_allowed()
                        });
                        if !still_allowed {
                            tracing::info!(namespace = %who.namespace, service_account = %who.service_account, "watch closed: access revoked");
                            let _ = tx.send(Err(ApiError::PermissionDenied.into())).await;
                            break;
                        }
                    }
                    Some((index, version)) = changes.next() => {
                        if version <= sent[index] {
                            continue;
                        }
                        let message = match broker.read(&paths[index], Some(version)).await {
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
        let who = self.authenticate(&request).await?;
        let req = request.into_inner();
        if req.applied.len() > MAX_PATHS_PER_CALL {
            return Err(ApiError::InvalidArgument("too many acknowledgements".into()).into());
        }
        self.record_acks(&who, req.applied)?;
        Ok(Response::new(v1::AckSecretsResponse {}))
    }
}

impl Broker {
    async fn operator_path<T>(
        &self,
        request: &Request<T>,
        raw_path: &str,
        capability: Capability,
        rpc: &'static str,
    ) -> Result<SecretPath, ApiError> {
        let who = self.authenticate(request).await?;
        let path = SecretPath::parse(raw_path)?;
        if path.key().is_some() {
            return Err(ApiError::InvalidArgument(
                "operator calls take a path without '#key'".into(),
            ));
        }
        self.authorize(&who, &path, capability, rpc)?;
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
