//! The connection to a broker and what every call shares: the token on
//! each request, and the retry of reads that failed for a passing reason.
//!
//! The calls themselves live by concern: reads in [`read`](self::read),
//! watches in [`crate::watch`], acknowledgements in [`crate::ack`], the
//! operator's calls in [`crate::operator`].

mod builder;
mod connect;
mod read;
mod tls;

use coffer_proto::v1;
use secrecy::ExposeSecret;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use zeroize::Zeroizing;

pub use builder::ClientBuilder;

use crate::{Error, RetryPolicy, TokenSource};

pub(crate) type BrokerClient = v1::secret_broker_client::SecretBrokerClient<Channel>;
pub(crate) type OperatorClient = v1::secret_operator_client::SecretOperatorClient<Channel>;

/// A connection to a Coffer broker. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    broker: BrokerClient,
    operator: OperatorClient,
    token: TokenSource,
    retry: RetryPolicy,
}

impl Client {
    /// Starts configuring a client for `endpoint`: `https://host:port`,
    /// `http://127.0.0.1:port` or `http://[::1]:port` (plaintext: loopback
    /// addresses only, see
    /// [`danger_insecure_plaintext`](ClientBuilder::danger_insecure_plaintext)),
    /// or `unix:/path/to.sock`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint.into())
    }

    /// A client configured from the environment (see
    /// [`ClientBuilder::from_env`]), connected lazily: the first call
    /// connects, and a broker that is not up yet costs a retry, not an error
    /// here.
    pub async fn from_env() -> Result<Self, Error> {
        ClientBuilder::from_env()?.connect_lazy().await
    }

    /// The same connection presenting another token.
    pub fn with_token(&self, token: TokenSource) -> Client {
        Client {
            token,
            ..self.clone()
        }
    }

    /// A client over `channel`, once the builder has made it.
    pub(crate) fn over(channel: Channel, token: TokenSource, retry: RetryPolicy) -> Self {
        Self {
            broker: BrokerClient::new(channel.clone()),
            operator: OperatorClient::new(channel),
            token,
            retry,
        }
    }

    /// The workload service (get, watch, ack) on this connection.
    pub(crate) fn broker(&self) -> BrokerClient {
        self.broker.clone()
    }

    /// The operator service (put, rotate, versions, status, leases).
    pub(crate) fn operator(&self) -> OperatorClient {
        self.operator.clone()
    }

    /// The retry policy this client follows.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Wraps `message` in a request that carries the caller's token.
    pub(crate) fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
        let token = self.token.token()?;
        let header = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let mut value = MetadataValue::try_from(header.as_str())
            .map_err(|_| Error::InvalidResponse("token contains bytes not allowed in a header"))?;
        value.set_sensitive(true);
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// Runs a read, retrying it per the retry policy while it fails for a
    /// passing reason; after `UNAUTHENTICATED` a token file is read again
    /// and the call tried once more. Writes never come here: a write whose
    /// answer was lost may have happened.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut backoff = self.retry.backoff();
        let mut attempt = 1;
        let mut token_reread = false;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if matches!(error, Error::Unauthenticated(_)) && !token_reread {
                token_reread = true;
                if self.token.refused() {
                    continue;
                }
            }
            if !error.is_transient() || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            attempt += 1;
            let delay = backoff.next_delay();
            tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The broker refused the token: a token file is read again on next
    /// use. Returns whether there is a file to read (a fixed token cannot
    /// change).
    pub(crate) fn token_refused(&self) -> bool {
        self.token.refused()
    }

    /// After `UNAUTHENTICATED`, the next call reads the token file again.
    pub(crate) fn refused(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::Unauthenticated {
            self.token.refused();
        }
    }

    /// The token source, for a stream that must mark it refused later.
    pub(crate) fn token_source(&self) -> &TokenSource {
        &self.token
    }
}
