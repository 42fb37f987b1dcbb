//! `SecretOperator`: the write side, for operators' own tokens. Every call
//! is authorized and audited before it acts.

use coffer_proto::{
    SecretData,
    v1::{self, secret_operator_server::SecretOperator},
};
use tonic::{Request, Response, Status};

use super::{Broker, Call};
use crate::{
    error::ApiError,
    path::SecretPath,
    policy::Capability,
    rotation::{RotationError, RotationSpec},
    store::SecretWrite,
};

impl Broker {
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
        let allowed = self.authorize(&call, &who, &path, capability).await?;
        self.audit_served(&call, &who, &path, allowed, None, "allowed")
            .await?;
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
        let path = self
            .operator_path(
                &request,
                &request.get_ref().path,
                Capability::Rotate,
                "RotateSecret",
            )
            .await?;
        let current = match self.inner.store.get(path.base(), None).await {
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
        let data = spec
            .next_value(current.as_ref().map(|c| &c.data))
            .map_err(|e| match e {
                RotationError::Random => ApiError::Store(crate::store::StoreError::Internal(
                    "the system random number generator failed".into(),
                )),
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
            .put(path.base(), write)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(path = %path, version, key = spec.key.as_deref().unwrap_or(""), "secret rotated");
        Ok(Response::new(v1::RotateSecretResponse { version }))
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
        let (current_version, created) = match self.inner.store.versions(path.base()).await {
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
        Ok(Response::new(v1::RotationStatusResponse {
            current_version,
            workloads: rollout.workloads,
            expected: rollout.expected,
            applied: rollout.applied,
            failed: rollout.failed,
            pending: rollout.pending,
        }))
    }
}
