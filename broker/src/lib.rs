//! The Coffer broker.
//!
//! It authenticates each workload by its Kubernetes projected service-account
//! token ([`auth`]), authorizes it by policy ([`policy`]), reads secrets from a
//! [`store::SecretStore`], and serves them over gRPC ([`service`], [`server`]).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use coffer_broker::{auth::signer::DevSigner, auth::jwt::{JwtVerifier, KeySet, VerifierConfig},
//!     policy::Policy, server, service::Broker, store::dev::DevStore};
//!
//! let signer = DevSigner::generate("https://issuer.example")?;
//! let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes())?;
//! let authn = JwtVerifier::new(VerifierConfig::new("https://issuer.example", "coffer"), keys);
//! let broker = Broker::new(Arc::new(authn), Policy::deny_all(), Arc::new(DevStore::in_memory()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
//! server::serve(broker, None, incoming, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod audit;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod path;
pub mod peers;
pub mod policy;
pub mod reload;
pub mod rotation;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
