//! A whole broker, wired: `AppConfig` → [`App::build`] → [`App::run`].
//!
//! `coffer-broker serve` and `coffer-broker dev` both start here, and so can
//! a test or the bench, in-process on `127.0.0.1:0`: [`App::build`] reads
//! every file and checks every setting (a mistake is
//! [`AppError::Usage`], which the binary exits 64 for), [`App::bind`] binds
//! the configured addresses, and [`App::run`] serves on the listeners it is
//! given until the shutdown future resolves (as mini-redis's
//! `server::run(listener, shutdown)` does).
//!
//! The rooms: `config.rs` (the settings, plain data), `build.rs` (the
//! order in which the parts are made), `run.rs` (listeners, serving,
//! shutdown).

mod build;
mod config;
mod run;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use config::{
    AppConfig, AuditSettings, AuthSource, DevKey, LimitSettings, PeerSettings, PolicySource,
    StoreSource, TlsSettings, VaultSettings,
};
pub use run::{Listener, Listeners};

use crate::{
    server::ListenAddr,
    service::Broker,
    store::dev::DevStoreError,
    tls::{ReloadingCert, TlsError},
};

/// A broker built and ready to serve (see the [module](self) docs).
pub struct App {
    broker: Broker,
    listen: ListenAddr,
    addr_file: Option<PathBuf>,
    metrics_listen: Option<std::net::SocketAddr>,
    tls: Option<(Arc<ReloadingCert>, Duration)>,
    policy_reload: Option<PolicyReload>,
}

/// What the policy file's reloader needs: the file, how often it is
/// checked, and the fingerprint of the policy in force.
struct PolicyReload {
    path: PathBuf,
    interval: Duration,
    loaded: String,
}

/// Why a broker could not be built or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// A configuration mistake: it will fail the same way until the
    /// configuration is fixed.
    #[error("{0}")]
    Usage(String),
    /// The TLS certificate or key did not load.
    #[error("loading the TLS certificate")]
    LoadTls(#[source] TlsError),
    /// The TLS server configuration could not be made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An address could not be bound.
    #[error("binding {what}")]
    Bind {
        /// The address, as the message names it.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The dev store's sealed file could not be opened.
    #[error(transparent)]
    DevStore(#[from] DevStoreError),
    /// The gRPC server failed.
    #[error(transparent)]
    Serve(#[from] tonic::transport::Error),
    /// Any other I/O failure (the address file, the socket file).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl AppError {
    fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }
}

impl App {
    /// The broker inside: for a caller that drives it directly.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}
