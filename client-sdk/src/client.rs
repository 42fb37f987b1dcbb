use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use coffer_proto::v1;
use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use secrecy::{ExposeSecret, SecretString};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri},
};
use zeroize::Zeroizing;

use crate::{
    Applied, Error, Lease, Leases, Put, RetryPolicy, Rotate, Rotated, RotationStatus, Secret,
    TokenSource, VersionAction, Versions, WatchStream,
    env::{self, Env},
    tls::ReloadingRoots,
};

type BrokerClient = v1::secret_broker_client::SecretBrokerClient<Channel>;
type OperatorClient = v1::secret_operator_client::SecretOperatorClient<Channel>;

/// Configures a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    endpoint: String,
    ca_pem: Option<Vec<u8>>,
    ca_file: Option<PathBuf>,
    system_roots: Option<bool>,
    server_name: Option<String>,
    token: TokenSource,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    retry: RetryPolicy,
    insecure_plaintext: bool,
}

impl ClientBuilder {
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
        self.build(false).await
    }

    /// Returns at once; the connection is made (and remade) on use. Sidecars
    /// use this so a broker restart costs a retry, not a crash.
    pub async fn connect_lazy(self) -> Result<Client, Error> {
        self.build(true).await
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls = ClientTlsConfig::new();
        let mut has_ca = false;
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
            has_ca = true;
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|source| Error::CaFile {
                path: path.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
            has_ca = true;
        }
        if self.system_roots.unwrap_or(!has_ca) {
            tls = tls.with_native_roots();
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    async fn build(self, lazy: bool) -> Result<Client, Error> {
        let channel = if let Some(path) = self.endpoint.strip_prefix("unix:") {
            let path = std::path::PathBuf::from(path);
            // The URI is ignored by the connector; it only has to parse.
            let endpoint =
                Endpoint::from_static("http://coffer.sock").connect_timeout(self.connect_timeout);
            let endpoint = match self.timeout {
                Some(timeout) => endpoint.timeout(timeout),
                None => endpoint,
            };
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            });
            if lazy {
                endpoint.connect_with_connector_lazy(connector)
            } else {
                endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| Error::transport(&e))?
            }
        } else if let Some(file) = self.reloading_ca_file()? {
            self.reloading_channel(file, lazy).await?
        } else {
            let tls = self.check_transport()?;
            let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
                .map_err(|_| Error::Endpoint(self.endpoint.clone()))?
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true);
            if let Some(timeout) = self.timeout {
                endpoint = endpoint.timeout(timeout);
            }
            if tls {
                endpoint = endpoint
                    .tls_config(self.tls_config()?)
                    .map_err(|e| Error::Tls(e.to_string()))?;
            }
            if lazy {
                endpoint.connect_lazy()
            } else {
                endpoint.connect().await.map_err(|e| Error::transport(&e))?
            }
        };
        Ok(Client {
            broker: BrokerClient::new(channel.clone()),
            operator: OperatorClient::new(channel),
            token: self.token,
            retry: self.retry,
        })
    }
}

impl ClientBuilder {
    /// The CA file to follow, when TLS is verified against a
    /// [`ca_file`](Self::ca_file) alone (with the system roots too, the
    /// file is read once).
    fn reloading_ca_file(&self) -> Result<Option<PathBuf>, Error> {
        match &self.ca_file {
            Some(file) if self.check_transport()? && !self.system_roots.unwrap_or(false) => {
                Ok(Some(file.clone()))
            }
            _ => Ok(None),
        }
    }

    /// A channel whose every new connection trusts the CA file as it is
    /// then ([`ReloadingRoots`]): TLS is made by our connector, so tonic
    /// sees `http://` for the socket while requests carry `https://`.
    async fn reloading_channel(&self, file: PathBuf, lazy: bool) -> Result<Channel, Error> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let host = uri
            .host()
            .ok_or_else(|| Error::Endpoint(self.endpoint.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = self.server_name.clone().unwrap_or_else(|| host.clone());
        let name = ServerName::try_from(name.clone())
            .map_err(|_| Error::Tls(format!("{name:?} is not a TLS server name")))?;
        let roots = Arc::new(ReloadingRoots::load(file, self.ca_pem.clone())?);
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let origin: Uri = format!("https://{authority}")
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let mut endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?
            .origin(origin)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let connector = tower::service_fn(move |_: Uri| {
            let (roots, host, name) = (Arc::clone(&roots), host.clone(), name.clone());
            async move { roots.connect(&host, port, name).await }
        });
        if lazy {
            Ok(endpoint.connect_with_connector_lazy(connector))
        } else {
            endpoint
                .connect_with_connector(connector)
                .await
                .map_err(|e| Error::transport(&e))
        }
    }

    /// Whether the endpoint needs TLS (`https://`), after refusing plaintext
    /// `http://` to anything but a loopback address unless
    /// [`danger_insecure_plaintext`](Self::danger_insecure_plaintext) says so.
    fn check_transport(&self) -> Result<bool, Error> {
        use tonic::codegen::http::uri::Scheme;
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => Ok(true),
            Some(scheme) if *scheme == Scheme::HTTP => {
                // Only an address literal: a name could resolve anywhere.
                let loopback = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
                if loopback {
                    Ok(false)
                } else if self.insecure_plaintext {
                    tracing::warn!(
                        host,
                        "danger_insecure_plaintext: the token and secrets cross the network unencrypted"
                    );
                    Ok(false)
                } else {
                    Err(Error::Plaintext(host.to_string()))
                }
            }
            _ => Err(Error::Endpoint(self.endpoint.clone())),
        }
    }
}

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
        ClientBuilder {
            endpoint: endpoint.into(),
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

    /// A client configured from the environment (see
    /// [`ClientBuilder::from_env`]), connected lazily: the first call
    /// connects, and a broker that is not up yet costs a retry, not an error
    /// here.
    pub async fn from_env() -> Result<Self, Error> {
        ClientBuilder::from_env()?.connect_lazy().await
    }

    /// Wraps `message` in a request that carries the caller's token.
    fn request<T>(&self, message: T) -> Result<Request<T>, Error> {
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
    /// and the call tried once more.
    async fn read<T, F, Fut>(&self, mut call: F) -> Result<T, Error>
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

    /// The current version of the secret at `path` (`app/db` or `app/db#key`).
    pub async fn get(&self, path: &str) -> Result<Secret, Error> {
        self.get_version(path, None).await
    }

    /// The current value at `path` as text (UTF-8), held in a zeroizing
    /// string. A map secret needs `path#key`.
    pub async fn get_str(&self, path: &str) -> Result<SecretString, Error> {
        let secret = self.get(path).await?;
        Ok(SecretString::from(secret.expose_str()?.to_string()))
    }

    /// The current value at `path` decoded as JSON into `T` (see
    /// [`Secret::json`]): a JSON document, or a map secret's keys as fields.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.get(path).await?.json()
    }

    /// A given version of the secret at `path`, or the current one for `None`.
    pub async fn get_version(&self, path: &str, version: Option<u64>) -> Result<Secret, Error> {
        let response = self
            .read(|| async {
                let request = self.request(v1::GetSecretRequest {
                    path: path.to_string(),
                    version,
                })?;
                self.broker
                    .clone()
                    .get_secret(request)
                    .await
                    .map_err(Error::status)
            })
            .await?
            .into_inner();
        response
            .secret
            .ok_or(Error::InvalidResponse("response without a secret"))?
            .try_into()
    }

    /// Several secrets in one round trip; each item succeeds or fails alone.
    pub async fn get_many<I, S>(&self, paths: I) -> Result<Vec<Result<Secret, Error>>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let requests: Vec<v1::GetSecretRequest> = paths
            .into_iter()
            .map(|p| v1::GetSecretRequest {
                path: p.into(),
                version: None,
            })
            .collect();
        let request = self.request(v1::GetSecretsRequest { requests })?;
        let response = self
            .broker
            .clone()
            .get_secrets(request)
            .await
            .inspect_err(|status| self.refused(status))
            .map_err(Error::status)?
            .into_inner();
        Ok(response
            .results
            .into_iter()
            .map(|item| match item.result {
                Some(v1::secret_result::Result::Secret(s)) => Secret::try_from(s),
                Some(v1::secret_result::Result::Error(e)) => {
                    Err(Error::from_code(crate::Code::from_i32(e.code), e.message))
                }
                None => Err(Error::InvalidResponse("batch item without a result")),
            })
            .collect())
    }

    /// Watches `paths`, reconnecting by itself: the first event is a
    /// snapshot of all of them, then one event per change. See
    /// [`WatchStream`] for what it promises across reconnects.
    pub async fn watch<I, S>(&self, paths: I) -> Result<WatchStream, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        WatchStream::start(self.clone(), paths.into_iter().map(Into::into).collect()).await
    }

    /// One watch stream, without reconnecting: it ends when the broker ends
    /// it (an error, or the end of the stream). For callers that run their
    /// own reconnect loop, as the sidecar does.
    pub async fn watch_once<I, S>(&self, paths: I) -> Result<SecretStream, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let request = self.request(v1::WatchSecretsRequest {
            paths: paths.into_iter().map(Into::into).collect(),
        })?;
        let inner = self
            .broker
            .clone()
            .watch_secrets(request)
            .await
            .inspect_err(|status| self.refused(status))
            .map_err(Error::status)?
            .into_inner();
        Ok(SecretStream {
            inner,
            token: self.token.clone(),
        })
    }

    /// The retry policy this client follows.
    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// The broker refused the token: a token file is read again on next
    /// use. Returns whether there is a file to read (a fixed token cannot
    /// change).
    pub(crate) fn token_refused(&self) -> bool {
        self.token.refused()
    }

    /// After `UNAUTHENTICATED`, the next call reads the token file again.
    fn refused(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::Unauthenticated {
            self.token.refused();
        }
    }

    /// Reports the versions this workload applied.
    pub async fn ack(&self, applied: Vec<Applied>) -> Result<(), Error> {
        let request = self.request(v1::AckSecretsRequest {
            applied: applied.into_iter().map(Into::into).collect(),
        })?;
        self.broker
            .clone()
            .ack_secrets(request)
            .await
            .map_err(Error::status)?;
        Ok(())
    }

    /// Writes a new version (capability `write`). Returns the version
    /// written. Not retried: a write whose answer was lost may have happened.
    pub async fn put(&self, put: Put) -> Result<u64, Error> {
        let request = self.request(v1::PutSecretRequest {
            path: put.path,
            value: Some(put.data.into()),
            content_type: put.content_type,
            cas: put.cas,
            labels: put.labels.into_iter().collect(),
        })?;
        Ok(self
            .operator
            .clone()
            .put_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .version)
    }

    /// Has the broker generate a new value (capability `rotate`). Returns
    /// the version.
    pub async fn rotate(&self, rotate: Rotate) -> Result<u64, Error> {
        self.rotate_detailed(rotate).await.map(|r| r.version)
    }

    /// Like [`Self::rotate`], also saying which key of a map got the new
    /// value.
    pub async fn rotate_detailed(&self, rotate: Rotate) -> Result<Rotated, Error> {
        let request = self.request(rotate.into_wire())?;
        let answer = self
            .operator
            .clone()
            .rotate_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner();
        Ok(Rotated {
            version: answer.version,
            key: answer.key.filter(|k| !k.is_empty()),
        })
    }

    /// Soft-deletes (`delete`), restores (`undelete`) or destroys
    /// (`destroy`) `versions` of `path`; empty means the current version.
    pub async fn change_versions(
        &self,
        action: VersionAction,
        path: &str,
        versions: Vec<u64>,
    ) -> Result<(), Error> {
        let request = self.request(v1::DeleteVersionsRequest {
            path: path.to_string(),
            versions,
        })?;
        let mut operator = self.operator.clone();
        match action {
            VersionAction::Delete => operator
                .delete_versions(request)
                .await
                .map_err(Error::status)?,
            VersionAction::Undelete => operator
                .undelete_versions(request)
                .await
                .map_err(Error::status)?,
            VersionAction::Destroy => operator
                .destroy_versions(request)
                .await
                .map_err(Error::status)?,
        };
        Ok(())
    }

    /// The names under `folder` the caller may list; folders end with `/`.
    pub async fn list_secrets(&self, folder: &str) -> Result<Vec<String>, Error> {
        let names = self
            .read(|| async {
                let request = self.request(v1::ListSecretsRequest {
                    path: folder.to_string(),
                })?;
                self.operator
                    .clone()
                    .list_secrets(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(names.into_inner().names)
    }

    /// The same connection presenting another token.
    pub fn with_token(&self, token: TokenSource) -> Client {
        Client {
            broker: self.broker.clone(),
            operator: self.operator.clone(),
            token,
            retry: self.retry,
        }
    }

    /// Tells a broker replica that `path` changed (brokers to their peers).
    pub async fn notify_changed(&self, path: &str) -> Result<(), Error> {
        let request = self.request(v1::NotifyChangedRequest {
            path: path.to_string(),
        })?;
        self.operator
            .clone()
            .notify_changed(request)
            .await
            .map_err(Error::status)?;
        Ok(())
    }

    /// Makes `to_version`'s value current again, as a new version
    /// (capability `rollback`). Returns the new version.
    pub async fn rollback(&self, path: &str, to_version: u64) -> Result<u64, Error> {
        let request = self.request(v1::RollbackSecretRequest {
            path: path.to_string(),
            to_version,
        })?;
        Ok(self
            .operator
            .clone()
            .rollback_secret(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .version)
    }

    /// The versions of `path` (capability `list`).
    pub async fn versions(&self, path: &str) -> Result<Versions, Error> {
        let response = self
            .read(|| async {
                let request = self.request(v1::ListVersionsRequest {
                    path: path.to_string(),
                })?;
                self.operator
                    .clone()
                    .list_versions(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner().into())
    }

    /// The live leases of dynamic secrets on the replica connected, of
    /// `path` and the paths under it (`None`: every path); only those the
    /// caller has `list` on (capability `list`).
    pub async fn leases(&self, path: Option<&str>) -> Result<Leases, Error> {
        let response = self
            .read(|| async {
                let request = self.request(v1::ListLeasesRequest {
                    path: path.unwrap_or_default().to_string(),
                })?;
                self.operator
                    .clone()
                    .list_leases(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner().into())
    }

    /// Revokes `lease_id` now; its holder's watches get a new credential
    /// (capability `revoke` on the lease's path). Returns the lease as it
    /// was.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<Lease, Error> {
        let request = self.request(v1::RevokeLeaseRequest {
            lease_id: lease_id.to_string(),
        })?;
        let revoked = self
            .operator
            .clone()
            .revoke_lease(request)
            .await
            .map_err(Error::status)?
            .into_inner()
            .revoked
            .unwrap_or_default();
        Ok(revoked.into())
    }

    /// Which workloads acknowledged which version of `path`, merged over
    /// every broker replica (capability `status`).
    pub async fn status(&self, path: &str) -> Result<RotationStatus, Error> {
        self.status_of(path, false).await
    }

    /// Like [`Self::status`], from the one replica connected, without
    /// asking its peers (what replicas ask each other).
    pub async fn status_local(&self, path: &str) -> Result<RotationStatus, Error> {
        self.status_of(path, true).await
    }

    async fn status_of(&self, path: &str, local_only: bool) -> Result<RotationStatus, Error> {
        let response = self
            .read(|| async {
                let request = self.request(v1::RotationStatusRequest {
                    path: path.to_string(),
                    local_only,
                })?;
                self.operator
                    .clone()
                    .rotation_status(request)
                    .await
                    .map_err(Error::status)
            })
            .await?;
        Ok(response.into_inner().into())
    }
}

/// Whether a watch event is the initial snapshot or a later change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchEventKind {
    /// The current value of every watched path.
    Snapshot,
    /// New versions of some paths.
    Update,
}

/// One message of a watch.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchEvent {
    /// Snapshot or update.
    pub kind: WatchEventKind,
    /// The secrets it carries.
    pub secrets: Vec<Secret>,
}

/// The stream returned by [`Client::watch_once`]. It ends when the broker
/// ends it; callers reconnect with backoff.
#[derive(Debug)]
pub struct SecretStream {
    inner: tonic::Streaming<v1::WatchSecretsResponse>,
    token: TokenSource,
}

impl SecretStream {
    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, Error>> {
        futures::StreamExt::next(self).await
    }
}

impl Stream for SecretStream {
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn lazy(endpoint: &str, danger: bool) -> Result<Client, Error> {
        Client::builder(endpoint)
            .token(TokenSource::from_static("t".to_string()))
            .danger_insecure_plaintext(danger)
            .connect_lazy()
            .await
    }

    #[tokio::test]
    async fn plaintext_is_refused_to_anything_but_loopback() {
        for endpoint in [
            "http://10.0.0.1:8443",
            "http://broker.example:80",
            "http://localhost:8443",
            "http://0.0.0.0:8443",
            "http://[::ffff:10.0.0.1]:8443",
            "HTTP://10.0.0.1:8443",
        ] {
            match lazy(endpoint, false).await {
                Err(Error::Plaintext(_)) => {}
                other => panic!("{endpoint}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn plaintext_to_loopback_and_tls_anywhere_are_allowed() {
        for endpoint in [
            "http://127.0.0.1:8443",
            "http://127.8.0.1:1",
            "http://[::1]:8443",
            "https://10.0.0.1:8443",
            "https://broker.example:443",
        ] {
            assert!(lazy(endpoint, false).await.is_ok(), "{endpoint}");
        }
    }

    #[tokio::test]
    async fn the_danger_door_opens_plaintext_to_any_host() {
        assert!(lazy("http://10.0.0.1:8443", true).await.is_ok());
        // It does not make other schemes acceptable.
        assert!(matches!(
            lazy("ftp://10.0.0.1:21", true).await,
            Err(Error::Endpoint(_))
        ));
    }

    #[test]
    fn the_refusal_names_the_host_and_the_way_out() {
        let text = Error::Plaintext("10.0.0.1".into()).to_string();
        assert!(
            text.contains("10.0.0.1") && text.contains("https://"),
            "{text}"
        );
    }
}
