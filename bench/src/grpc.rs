//! The gRPC client side both servers are measured with: a connection, a
//! request carrying a bearer token, one timed `GetSecret`.

use std::time::{Duration, Instant};

use coffer_proto::v1::{self, secret_broker_client::SecretBrokerClient};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::fixture::PATH;

pub(crate) async fn connect(url: &str) -> anyhow::Result<Channel> {
    connect_to(url, None).await
}

/// A connection to `url`, trusting `ca_pem` for an `https://` one.
pub(crate) async fn connect_to(url: &str, ca_pem: Option<&[u8]>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?.tcp_nodelay(true);
    if let Some(ca) = ca_pem {
        endpoint = endpoint.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )?;
    }
    Ok(endpoint.connect().await?)
}

/// A connection to `target`.
pub(crate) async fn connect_target(target: &dyn crate::target::Target) -> anyhow::Result<Channel> {
    connect_to(target.url(), target.ca_pem()).await
}

pub(crate) fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// One `GetSecret` of the bench's path with `token`, and how long it took.
pub(crate) async fn timed_get(
    client: &mut SecretBrokerClient<Channel>,
    token: &str,
) -> Result<Duration, Status> {
    let sent = Instant::now();
    let request = authed(
        v1::GetSecretRequest {
            path: PATH.into(),
            version: None,
        },
        token,
    );
    client.get_secret(request).await?;
    Ok(sent.elapsed())
}
