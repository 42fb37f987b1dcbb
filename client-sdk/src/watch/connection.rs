//! One watch stream on one connection, as the broker sends it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use coffer_proto::v1;
use futures::Stream;

use super::{WatchEvent, WatchEventKind};
use crate::{Error, Secret, TokenSource};

/// The stream returned by [`Client::watch_connection`](crate::Client::watch_connection).
/// It ends when the broker ends it or the connection drops; callers
/// reconnect with backoff ([`WatchStream`](crate::WatchStream) does that
/// for you).
#[derive(Debug)]
pub struct WatchConnection {
    inner: tonic::Streaming<v1::WatchSecretsResponse>,
    token: TokenSource,
}

impl WatchConnection {
    pub(super) fn new(
        inner: tonic::Streaming<v1::WatchSecretsResponse>,
        token: TokenSource,
    ) -> Self {
        Self { inner, token }
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for WatchConnection {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let token = self.token.clone();
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|result| {
                // A watch ends UNAUTHENTICATED when its token expires: the
                // reconnect must present the refreshed token, not this one.
                let message = result
                    .inspect_err(|status| {
                        if status.code() == tonic::Code::Unauthenticated {
                            token.refused();
                        }
                    })
                    .map_err(Error::status)?;
                let kind = match message.kind() {
                    v1::WatchEventKind::Snapshot => WatchEventKind::Snapshot,
                    v1::WatchEventKind::Update => WatchEventKind::Update,
                    v1::WatchEventKind::Unspecified => {
                        return Err(Error::InvalidResponse("watch event of unknown kind"));
                    }
                };
                let secrets = message
                    .secrets
                    .into_iter()
                    .map(Secret::try_from)
                    .collect::<Result<_, _>>()?;
                Ok(WatchEvent { kind, secrets })
            })
        })
    }
}
