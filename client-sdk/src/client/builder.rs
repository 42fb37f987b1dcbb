//! The options of a [`Client`]: endpoint, trust, token, timeouts, retries.
//! How they become a channel is [`connect`](super::connect)'s.

use std::{path::PathBuf, time::Duration};

use super::Client;
use crate::{
    Error, RetryPolicy, TokenSource,
    env::{self, Env},
};

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    pub(super) endpoint: String,
    pub(super) ca_pem: Option<Vec<u8>>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) system_roots: Option<bool>,
    pub(super) server_name: Option<String>,
    pub(super) token: TokenSource,
    pub(super) connect_timeout: Duration,
    pub(super) timeout: Option<Duration>,
    pub(super) retry: RetryPolicy,
    pub(super) insecure_plaintext: bool,
}

impl ClientBuilder {
    /// The defaults for `endpoint` ([`Client::builder`]).
    pub(super) fn new(endpoint: String) -> Self {
        Self {
            endpoint,
            ca_pem: None,
            ca_file: None,
            system_roots: None,
            server_name: None,
            token: TokenSource::projected(),
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            retry: RetryPolicy::default(),
            insecure_plaintext: false,
        }
    }

    /// A builder from the environment that the sidecar and `cofferctl` read
    /// too: `COFFER_BROKER` (required), `COFFER_CA_FILE`,
    /// `COFFER_TOKEN_FILE` (default: the projected token) and
    /// `COFFER_TLS_SERVER_NAME`.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_with(&env::ProcessEnv)
    }

    /// Like [`Self::from_env`], reading from `env` (tests pass a map).
    pub fn from_env_with(env: &dyn Env) -> Result<Self, Error> {
        let endpoint = env
            .get(env::BROKER)
            .filter(|v| !v.trim().is_empty())
            .ok_or(Error::Config {
                name: env::BROKER,
                reason: "not set: the broker's endpoint, e.g. https://coffer-broker.coffer.svc:8443",
            })?;
        let mut builder = Client::builder(endpoint.trim());
        if let Some(file) = env.get(env::CA_FILE).filter(|v| !v.is_empty()) {
            builder = builder.ca_file(file);
        }
        if let Some(file) = env.get(env::TOKEN_FILE).filter(|v| !v.is_empty()) {
            builder = builder.token(TokenSource::file(file));
        }
        if let Some(name) = env.get(env::TLS_SERVER_NAME).filter(|v| !v.is_empty()) {
            builder = builder.tls_server_name(name);
        }
        Ok(builder)
    }

    /// Trusts this CA (PEM) for the broker's certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trusts the CA bundle (PEM) in this file. It is read when the client
    /// is built and again for each new connection: when its content changed
    /// (a CA rotation), new connections trust the new bundle while open
    /// ones go on; a file that is gone or holds no certificate keeps the
    /// last good roots. (With [`system_roots`](Self::system_roots)`(true)`
    /// too, it is read once.)
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Whether the operating system's trusted roots verify the broker too.
    /// Default: only when no CA is given.
    pub fn system_roots(mut self, enabled: bool) -> Self {
        self.system_roots = Some(enabled);
        self
    }

    /// The name the broker's certificate must carry, when it is not the
    /// endpoint's host (e.g. connecting by IP address).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Where the token comes from (default: [`TokenSource::projected`]).
    pub fn token(mut self, token: TokenSource) -> Self {
        self.token = token;
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A deadline for each unary call (default none); exceeded, a call fails
    /// with [`Error::DeadlineExceeded`]. Watches are not bound by it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How reads are retried and watches reconnect (default:
    /// [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// DANGER: allows `http://` to a host that is not a loopback address, so
    /// the token and every secret cross the network in clear, readable and
    /// replayable by anyone on the path. Only for a transport that is
    /// encrypted below gRPC (a service mesh's mTLS, a WireGuard link) and
    /// only when you know it is. Default `false`: plaintext goes to
    /// `127.0.0.0/8`, `::1` and Unix sockets only, and anything else is
    /// refused with [`Error::Plaintext`] before a byte is sent.
    pub fn danger_insecure_plaintext(mut self, allow: bool) -> Self {
        self.insecure_plaintext = allow;
        self
    }

    /// Connects now, failing if the broker cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let channel = self.channel(false).await?;
        Ok(Client::over(channel, self.token, self.retry))
    }

    /// Returns at once; the connection is made (and remade) on use. Sidecars
    /// use this so a broker restart costs a retry, not a crash.
    pub async fn connect_lazy(self) -> Result<Client, Error> {
        let channel = self.channel(true).await?;
        Ok(Client::over(channel, self.token, self.retry))
    }
}
