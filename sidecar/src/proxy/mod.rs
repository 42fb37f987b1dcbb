//! Credential-less connections: the sidecar as a local proxy that holds the
//! credential so the app never does (docs/proxy.md).
//!
//! Each entry of `proxies:` listens on loopback or a Unix socket ([`listen`]), takes the app's connection
//! without a credential, and opens the upstream one itself with the current
//! value of its secret path: [`postgres`] speaks the PostgreSQL v3 protocol
//! up to authentication and then relays bytes; [`http`] forwards each request
//! with a header built from the secret. The value arrives through
//! [`Credentials`], fed by the watch loop in [`crate::run`]; a new version
//! applies to every new upstream connection at once, open ones stay.

pub mod config;
pub mod http;
mod listen;
pub mod postgres;
mod tls;

use std::{collections::BTreeMap, sync::Arc};

use coffer::{Secret, SecretData};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};

pub use config::{Listen, Protocol, ProxySpec, UnixListen, UpstreamTls};

/// Something to read and write: the app's TCP or Unix stream, the
/// upstream's plain or TLS one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One version of a proxy's secret. Its data is zeroized on drop and its
/// `Debug` prints nothing secret; it is never written anywhere.
#[derive(Debug)]
pub struct Credential {
    /// The secret's version at the broker, for logs.
    pub version: u64,
    data: SecretData,
}

impl Credential {
    /// Wraps a secret's data (tests and callers outside the watch loop).
    pub fn new(version: u64, data: SecretData) -> Self {
        Self { version, data }
    }

    /// The bytes of one key; `None` when the secret has no such key.
    pub fn expose_key(&self, name: &str) -> Option<&[u8]> {
        self.data.key(name).map(|b| b.expose())
    }

    /// The whole secret.
    pub fn data(&self) -> &SecretData {
        &self.data
    }
}

/// The latest credential of a path, `None` until the first arrives.
pub type CredentialRx = watch::Receiver<Option<Arc<Credential>>>;

/// The latest credential of every proxied path.
#[derive(Debug, Default)]
pub struct Credentials {
    by_path: BTreeMap<String, watch::Sender<Option<Arc<Credential>>>>,
}

impl Credentials {
    /// One slot for each path the proxies name.
    pub fn new(specs: &[ProxySpec]) -> Self {
        let by_path = specs
            .iter()
            .map(|s| (s.path.clone(), watch::Sender::new(None)))
            .collect();
        Self { by_path }
    }

    /// The receiver a proxy of `path` reads the current credential from.
    pub fn subscribe(&self, path: &str) -> Option<CredentialRx> {
        self.by_path.get(path).map(watch::Sender::subscribe)
    }

    /// Takes a new version of each proxied path from `secrets`; a version
    /// already held changes nothing.
    pub fn publish<'a>(&self, secrets: impl IntoIterator<Item = &'a Secret>) {
        for secret in secrets {
            let Some(slot) = self.by_path.get(secret.path()) else {
                continue;
            };
            let version = secret.version();
            let fresh = slot
                .borrow()
                .as_ref()
                .is_none_or(|held| held.version != version);
            if fresh {
                tracing::info!(path = secret.path(), version, "proxy credential updated");
                slot.send_replace(Some(Arc::new(Credential::new(
                    version,
                    secret.data().clone(),
                ))));
            }
        }
    }
}

/// Binds every proxy's listener and serves it on the current runtime.
/// Fails at once when a listener cannot be bound.
pub async fn spawn_all(specs: &[ProxySpec], credentials: &Credentials) -> std::io::Result<()> {
    for spec in specs {
        let Some(rx) = credentials.subscribe(&spec.path) else {
            continue;
        };
        let listener = listen::Listener::bind(&spec.listen).await?;
        let addr = listener.describe();
        tracing::info!(proxy = %spec.name, %addr, protocol = ?spec.protocol, "proxy listening");
        let spec = Arc::new(spec.clone());
        match spec.protocol {
            Protocol::Postgres => {
                let proxy = postgres::PostgresProxy::new(spec, rx)?;
                tokio::spawn(proxy.serve(listener));
            }
            Protocol::Http => {
                let proxy = http::HttpProxy::new(spec, rx)?;
                tokio::spawn(proxy.serve(listener));
            }
        }
    }
    Ok(())
}
