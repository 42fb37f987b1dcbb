//! `SecretOperator`: the write side, for operators' own tokens. Every call
//! is authorized and audited before it acts.

use std::collections::BTreeMap;

use coffer_proto::{
    SecretData,
    v1::{self, secret_operator_server::SecretOperator},
};
use tonic::{Request, Response, Status};

use super::{Broker, Call, Caller};
use crate::{
    error::ApiError,
    path::SecretPath,
    policy::Capability,
    rotation::{RotationError, RotationSpec},
    store::{SecretWrite, StoreError, VersionChange},
};

impl Broker {
    async fn operator_path<T>(
        &self,
        request: &Request<T>,
        raw_path: &str,
        capability: Capability,
        rpc: &'static str,
    ) -> Result<SecretPath, ApiError> {
        self.operator_call(request, raw_path, capability, rpc)
            .await
            .map(|(_, _, path)| path)
    }

    /// [`Self::operator_path`], keeping the call and the caller for a
    /// second decision.
    async fn operator_call<T>(
        &self,
        request: &Request<T>,
        raw_path: &str,
        capability: Capability,
        rpc: &'static str,
    ) -> Result<(Call, Caller, SecretPath), ApiError> {
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
        let allowed = self.authorize(&call, &who, &path, capability).await?;
        self.audit_served(&call, &who, &path, &allowed, None, "allowed")
            .await?;
        Ok((call, who, path))
    }

    /// The rotation spec rides on a write's labels (`coffer.rotate/*`), and
    /// it decides what the next `rotate` does: so a write that sets or
    /// changes it needs `rotate` too, and the new spec must be one `rotate`
    /// would accept. A write with labels but no spec labels keeps the
    /// stored spec (a writer cannot drop it either).
    async fn guard_rotation_labels(
        &self,
        call: &Call,
        who: &Caller,
        path: &SecretPath,
        labels: &mut BTreeMap<String, String>,
    ) -> Result<(), ApiError> {
        let stored = match self.inner.store.get(path.name(), None).await {
            Ok(current) => RotationSpec::stored(&current.labels),
            Err(StoreError::NotFound) => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        let asked = RotationSpec::stored(labels);
        if asked.is_empty() {
            labels.extend(stored);
            return Ok(());
        }
        if asked == stored {
            return Ok(());
        }
        let allowed = self.authorize(call, who, path, Capability::Rotate).await?;
        RotationSpec::resolve(None, labels)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        self.audit_served(call, who, path, &allowed, None, "rotation_spec")
            .await
    }
}
impl Broker {
    fn notify_peers(&self, path: &SecretPath) {
        if let Some(peers) = self.inner.peers.get() {
            peers.notify(path.base());
        }
    }

    /// Delete, undelete or destroy: authorized and audited before it acts.
    async fn change_versions(
        &self,
        request: Request<v1::DeleteVersionsRequest>,
        change: VersionChange,
    ) -> Result<Response<v1::DeleteVersionsResponse>, Status> {
        let (capability, rpc) = match change {
            VersionChange::Delete => (Capability::Delete, "DeleteVersions"),
            VersionChange::Undelete => (Capability::Delete, "UndeleteVersions"),
            VersionChange::Destroy => (Capability::Destroy, "DestroyVersions"),
        };
        if request.get_ref().versions.len() > super::MAX_PATHS_PER_CALL {
            return Err(ApiError::InvalidArgument(format!(
                "at most {} versions per call",
                super::MAX_PATHS_PER_CALL
            ))
            .into());
        }
        let path = self
            .operator_path(&request, &request.get_ref().path, capability, rpc)
            .await?;
        let versions = &request.get_ref().versions;
        self.inner
            .store
            .change_versions(path.name(), versions, change)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, ?versions, rpc, "versions changed");
        self.notify_peers(&path);
        Ok(Response::new(v1::DeleteVersionsResponse {}))
    }
}

#[tonic::async_trait]
impl SecretOperator for Broker {
    #[tracing::instrument(skip_all, fields(rpc = "DeleteVersions"))]
    async fn delete_versions(
        &self,
        request: Request<v1::DeleteVersionsRequest>,
    ) -> Result<Response<v1::DeleteVersionsResponse>, Status> {
        self.change_versions(request, VersionChange::Delete).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "UndeleteVersions"))]
    async fn undelete_versions(
        &self,
        request: Request<v1::DeleteVersionsRequest>,
    ) -> Result<Response<v1::DeleteVersionsResponse>, Status> {
        self.change_versions(request, VersionChange::Undelete).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "DestroyVersions"))]
    async fn destroy_versions(
        &self,
        request: Request<v1::DeleteVersionsRequest>,
    ) -> Result<Response<v1::DeleteVersionsResponse>, Status> {
        self.change_versions(request, VersionChange::Destroy).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "NotifyChanged"))]
    async fn notify_changed(
        &self,
        request: Request<v1::NotifyChangedRequest>,
    ) -> Result<Response<v1::NotifyChangedResponse>, Status> {
        let call = Call::of(&request, "NotifyChanged");
        let who = self.authenticate(&request, &call).await?;
        let path = SecretPath::parse(&request.get_ref().path).map_err(ApiError::from)?;
        let raw = path.to_string();
        let accepted = self.inner.peers.get().is_some_and(|p| p.accepts(&who));
        let (outcome, reason) = if accepted {
            (crate::audit::Outcome::Allow, "peer")
        } else {
            (crate::audit::Outcome::Deny, "not_a_peer")
        };
        self.audit(&call.event(Some(&who), Some(&raw), None, outcome, reason))
            .await?;
        if !accepted {
            return Err(ApiError::PermissionDenied.into());
        }
        self.inner
            .store
            .refresh(path.name())
            .await
            .map_err(ApiError::from)?;
        tracing::debug!(path = %path, "re-read after a peer's write");
        Ok(Response::new(v1::NotifyChangedResponse {}))
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListLeases"))]
    async fn list_leases(
        &self,
        request: Request<v1::ListLeasesRequest>,
    ) -> Result<Response<v1::ListLeasesResponse>, Status> {
        self.list_leases_rpc(request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "RevokeLease"))]
    async fn revoke_lease(
        &self,
        request: Request<v1::RevokeLeaseRequest>,
    ) -> Result<Response<v1::RevokeLeaseResponse>, Status> {
        self.revoke_lease_rpc(request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "ListSecrets"))]
    async fn list_secrets(
        &self,
        request: Request<v1::ListSecretsRequest>,
    ) -> Result<Response<v1::ListSecretsResponse>, Status> {
        self.list_secrets_rpc(request).await
    }

    #[tracing::instrument(skip_all, fields(rpc = "PutSecret"))]
    async fn put_secret(
        &self,
        request: Request<v1::PutSecretRequest>,
    ) -> Result<Response<v1::PutSecretResponse>, Status> {
        let (call, who, path) = self
            .operator_call(
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
        let mut labels: BTreeMap<String, String> =
            std::mem::take(&mut req.labels).into_iter().collect();
        if !labels.is_empty() {
            self.guard_rotation_labels(&call, &who, &path, &mut labels)
                .await?;
        }
        let write = SecretWrite {
            data,
            content_type: std::mem::take(&mut req.content_type),
            labels,
            cas: req.cas,
        };
        let version = self
            .inner
            .store
            .put(path.name(), write)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, version, "secret written");
        self.inner.acks.published(path.base(), version);
        self.notify_peers(&path);
        Ok(Response::new(v1::PutSecretResponse { version }))
    }

    async fn rotate_secret(
        &self,
        request: Request<v1::RotateSecretRequest>,
    ) -> Result<Response<v1::RotateSecretResponse>, Status> {
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::Rotate,
                "RotateSecret",
            )
            .await?;
        let current = match self.inner.store.get(path.name(), None).await {
            Ok(current) => Some(current),
            Err(crate::store::StoreError::NotFound) => None,
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let mut labels = current
            .as_ref()
            .map(|c| c.labels.clone())
            .unwrap_or_default();
        let spec = RotationSpec::resolve(request.get_ref().spec.as_ref(), &labels)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let (data, key) =
            spec.next_value(current.as_ref().map(|c| &c.data))
                .map_err(|e| match e {
                    RotationError::Random => ApiError::Store(crate::store::StoreError::Internal(
                        "the system random number generator failed".into(),
                    )),
                    // The secret, not the request, is in the way: nothing is
                    // written.
                    e @ (RotationError::NoSuchKey | RotationError::NotAMap) => {
                        ApiError::FailedPrecondition(e.to_string())
                    }
                    e => ApiError::InvalidArgument(e.to_string()),
                })?;
        labels.extend(spec.labels());
        let write = SecretWrite {
            data,
            content_type: current
                .as_ref()
                .map(|c| c.content_type.clone())
                .unwrap_or_default(),
            labels,
            // Whatever was written meanwhile is not silently overwritten.
            cas: Some(current.as_ref().map_or(0, |c| c.version)),
        };
        let version = self
            .inner
            .store
            .put(path.name(), write)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, version, key = key.as_deref().unwrap_or(""), "secret rotated");
        self.inner.acks.published(path.base(), version);
        self.notify_peers(&path);
        Ok(Response::new(v1::RotateSecretResponse { version, key }))
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
            .rollback(path.name(), to)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, from = to, version, "secret rolled back");
        self.inner.acks.published(path.base(), version);
        self.notify_peers(&path);
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
        // From the metadata alone: showing a spec must not read the value
        // (on a leased path that would issue a credential to the caller).
        let list = self
            .inner
            .store
            .versions_with_labels(path.name())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(v1::ListVersionsResponse {
            current_version: list.current,
            versions: list
                .versions
                .into_iter()
                .map(|v| v1::VersionInfo {
                    version: v.version,
                    created_at: Some(v.created_at.into()),
                    deleted: v.deleted,
                    destroyed: v.destroyed,
                })
                .collect(),
            rotation_labels: RotationSpec::stored(&list.labels).into_iter().collect(),
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
        let (current_version, created) = match self.inner.store.versions(path.name()).await {
            Ok((current, versions)) => (
                current,
                versions
                    .iter()
                    .find(|v| v.version == current)
                    .map(|v| v.created_at),
            ),
            Err(crate::store::StoreError::NotFound) => (0, None),
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let rollout = self
            .inner
            .acks
            .status(path.base(), current_version, created);
        let local = v1::RotationStatusResponse {
            current_version,
            workloads: rollout.workloads,
            expected: rollout.expected,
            applied: rollout.applied,
            failed: rollout.failed,
            pending: rollout.pending,
            replicas: 1,
            replicas_answered: 1,
            ..self.watch_refusals_wire(path.base())
        };
        let peers = self.inner.peers.get().filter(|p| !p.is_empty());
        let (Some(peers), false) = (peers, request.get_ref().local_only) else {
            return Ok(Response::new(local));
        };
        // Peers decide for themselves: they are asked with the operator's
        // own token, never with more authority than the caller has.
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::auth::BearerToken::from_header(v).ok());
        let Some(token) = token else {
            return Ok(Response::new(local));
        };
        let others = peers.statuses(path.base(), token.expose()).await;
        let answered = 1 + others.len() as u32;
        let mut merged = crate::peers::merge(local, others);
        merged.replicas = 1 + peers.len() as u32;
        merged.replicas_answered = answered;
        Ok(Response::new(merged))
    }
}
