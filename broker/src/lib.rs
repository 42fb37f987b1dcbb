//! The Coffer broker.
//!
//! It authenticates each workload by its Kubernetes projected service-account
//! token ([`auth`]), authorizes it by policy ([`policy`]), reads secrets from a
//! [`store::SecretStore`], and serves them over gRPC ([`service`], [`server`]).
//!
//! A whole broker is an [`app::App`]: built from an [`app::AppConfig`], then
//! run on listeners it is given until a shutdown future resolves. This is
//! what `coffer-broker serve` does, and a test can do it in-process:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use coffer_broker::{
//!     app::{App, AppConfig, AuthSource, PolicySource, StoreSource},
//!     auth::{jwt::{JwtVerifier, KeySet, VerifierConfig}, signer::DevSigner},
//!     policy::Policy,
//! };
//!
//! let signer = DevSigner::generate("https://issuer.example")?;
//! let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes())?;
//! let authn = JwtVerifier::new(VerifierConfig::new("https://issuer.example", "coffer"), keys);
//! let app = App::build(AppConfig::new(
//!     AuthSource::Ready(Arc::new(authn)),
//!     PolicySource::Fixed(Policy::deny_all()),
//!     StoreSource::DevMemory,
//! ))
//! .await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! app.run(listener.into(), std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub mod app;
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
mod swept;
pub mod tls;
