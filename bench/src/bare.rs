//! A bare tonic server: the broker's own `SecretBroker` service shape with
//! no authentication, no policy and no store, answering with the very
//! message the broker serves. What the broker is measured against.

use std::{pin::Pin, sync::Arc};

use coffer_proto::{
    v1::{self, secret_broker_server::SecretBroker},
    wire::WatchReply,
};
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

/// A bare tonic server: no authentication, no policy, no store.
pub(crate) struct Bare {
    pub(crate) reply: Arc<v1::GetSecretResponse>,
    /// Each rotation of the bare side, sent to every open watch.
    pub(crate) updates: broadcast::Sender<v1::WatchSecretsResponse>,
}

type BareStream = Pin<Box<dyn Stream<Item = Result<WatchReply, Status>> + Send>>;

#[tonic::async_trait]
impl SecretBroker for Bare {
    type WatchSecretsStream = BareStream;

    async fn get_secret(
        &self,
        _: Request<v1::GetSecretRequest>,
    ) -> Result<Response<v1::GetSecretResponse>, Status> {
        Ok(Response::new((*self.reply).clone()))
    }

    async fn get_secrets(
        &self,
        _: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn watch_secrets(
        &self,
        _: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        let snapshot = v1::WatchSecretsResponse {
            kind: v1::WatchEventKind::Snapshot as i32,
            secrets: self.reply.secret.clone().into_iter().collect(),
        };
        let updates = tokio_stream::wrappers::BroadcastStream::new(self.updates.subscribe());
        // Each stream encodes its own message, as a plain tonic server does.
        let stream = futures::stream::once(async move { Ok(snapshot.into()) })
            .chain(updates.filter_map(|u| async move { u.ok().map(|u| Ok(u.into())) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_secrets(
        &self,
        _: Request<v1::AckSecretsRequest>,
    ) -> Result<Response<v1::AckSecretsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}
