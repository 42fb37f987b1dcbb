//! `SecretBroker`: what workloads call, to read, watch and acknowledge.

use coffer_proto::v1::{self, secret_broker_server::SecretBroker};
use tonic::{Request, Response, Status};

use super::{Broker, Call, MAX_PATHS_PER_CALL, read_reason, watch::WatchResponseStream};
use crate::{
    error::{ApiError, item_error},
    path::SecretPath,
    policy::Capability,
};

#[tonic::async_trait]
impl SecretBroker for Broker {
    type WatchSecretsStream = WatchResponseStream;

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "GetSecret"))]
    async fn get_secret(
        &self,
        request: Request<v1::GetSecretRequest>,
    ) -> Result<Response<v1::GetSecretResponse>, Status> {
        let call = Call::of(&request, "GetSecret");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        let path = SecretPath::parse(&req.path).map_err(ApiError::from)?;
        let allowed = self.authorize(&call, &who, &path, Capability::Read).await?;
        let result = self.read_as(&who, &path, req.path, req.version).await;
        let version = result.as_ref().ok().map(|s| s.version);
        self.audit_served(&call, &who, &path, &allowed, version, read_reason(&result))
            .await?;
        let secret = result?;
        Ok(Response::new(v1::GetSecretResponse {
            secret: Some(secret),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "GetSecrets"))]
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
                    let allowed = self.authorize(call, who, &path, Capability::Read).await?;
                    let result = self.read(who, &path, item.version).await;
                    let version = result.as_ref().ok().map(|s| s.version);
                    self.audit_served(call, who, &path, &allowed, version, read_reason(&result))
                        .await?;
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

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "WatchSecrets"))]
    async fn watch_secrets(
        &self,
        request: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        self.open_watch(request).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(rpc = "AckSecrets"))]
    async fn ack_secrets(
        &self,
        request: Request<v1::AckSecretsRequest>,
    ) -> Result<Response<v1::AckSecretsResponse>, Status> {
        let call = Call::of(&request, "AckSecrets");
        let who = self.authenticate(&request, &call).await?;
        let req = request.into_inner();
        // Bounded, and one per path: a repeated path is decided and
        // audited once.
        let acks = super::acks::distinct(req.applied)?;
        // Every path must be readable or watchable by the caller before
        // anything is recorded: a refusal is audited and records nothing.
        let mut checked = Vec::with_capacity(acks.len());
        for (path, item) in acks {
            let capability = if self
                .policy()
                .decide(&who, &path, Capability::Read)
                .is_allowed()
            {
                Capability::Read
            } else {
                Capability::Watch
            };
            let allowed = self.authorize(&call, &who, &path, capability).await?;
            checked.push((path, item, allowed));
        }
        let mut acked = Vec::with_capacity(checked.len());
        for (path, item, allowed) in checked {
            self.audit_served(
                &call,
                &who,
                &path,
                &allowed,
                Some(item.version),
                "acknowledged",
            )
            .await?;
            acked.push((path, item));
        }
        self.inner.acks.record(&who, &acked);
        Ok(Response::new(v1::AckSecretsResponse {}))
    }
}
