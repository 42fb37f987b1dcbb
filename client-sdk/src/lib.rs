//! The Coffer client SDK.
//!
//! Services use it to get and watch secrets from a Coffer broker directly,
//! authenticated by their Kubernetes service-account token, or to read the
//! files a Coffer sidecar mounted for them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coffer::Error> {
//! use coffer::Client;
//! use futures::StreamExt;
//!
//! // COFFER_BROKER, COFFER_CA_FILE and COFFER_TOKEN_FILE, as the sidecar reads them.
//! let client = Client::from_env().await?;
//!
//! let password = client.get_str("app/db#password").await?;
//!
//! #[derive(serde::Deserialize)]
//! struct Db { user: String, password: secrecy::SecretString }
//! let db: Db = client.get_json("app/db").await?;
//!
//! // Reconnects by itself; never the same version twice.
//! let mut changes = client.watch(["app/db"]).await?;
//! while let Some(event) = changes.next().await {
//!     for secret in event?.secrets {
//!         println!("{} is now version {}", secret.path(), secret.version());
//!     }
//! }
//! # let _ = (password, db.user, db.password);
//! # Ok(()) }
//! ```
//!
//! Values are held in zeroizing buffers; `Debug` prints `[REDACTED]` and there
//! is no `Display`. Errors never quote a value. Every accessor that hands
//! out the bytes themselves says so: [`Secret::expose_bytes`],
//! [`Secret::expose_key`], [`Secret::expose_str`], [`SecretBytes::expose`].
//!
//! # Watching
//!
//! [`Client::watch`] gives a [`WatchStream`] that reconnects by itself and
//! never yields a version twice. [`Client::watch_connection`] gives one
//! [`WatchConnection`], which ends with its connection, for callers that run
//! their own reconnect loop.
//!
//! # Configuration
//!
//! [`Client::builder`] takes the endpoint and then, as needed: a CA
//! ([`ClientBuilder::ca_file`], [`ClientBuilder::ca_pem`]; without one the
//! system roots are used), a TLS server name, timeouts, a [`RetryPolicy`]
//! and a [`TokenSource`]. [`Client::from_env`] reads the same variables as
//! the sidecar and `cofferctl` ([`mod@env`]).
//!
//! # Transport
//!
//! `https://` is verified TLS. Plaintext `http://` is accepted only to a
//! loopback address literal (`127.0.0.0/8`, `[::1]`), and `unix:/path` for a
//! Unix socket; any other `http://` host (a name, `0.0.0.0`, a pod IP) is
//! refused with [`Error::Plaintext`] before anything is sent, since the token
//! and the secrets would cross the network in clear. A transport encrypted
//! below gRPC (a service mesh's mTLS) can open that door knowingly with
//! [`ClientBuilder::danger_insecure_plaintext`]. The sidecar and `cofferctl`
//! follow the same rule and offer no such door.
//!
//! # Files
//!
//! A service whose pod runs the Coffer sidecar reads files instead:
//! [`FileSecret`] reads one and watches it, yielding after each update the
//! sidecar publishes.
//!
//! # Operators
//!
//! Writing, rotating, versions, rollout status and leases are methods of
//! the same [`Client`]; their requests and results ([`operator::Put`],
//! [`operator::Rotate`], [`operator::RotationStatus`], ...) live in
//! [`operator`].
//!
//! # Features
//!
//! - `replica`: `coffer::replica`, the calls broker replicas make to each
//!   other. The broker's, not a service's.

mod ack;
mod client;
pub mod env;
mod error;
pub mod files;
pub mod operator;
mod retry;
mod secret;
mod token;
mod watch;

#[cfg(feature = "replica")]
pub mod replica;

pub use ack::{Applied, ApplyState};
pub use client::{Client, ClientBuilder};
pub use coffer_proto::{SecretBytes, SecretData};
pub use error::{Code, Error};
pub use files::{FileSecret, FileWatch};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use token::TokenSource;
pub use watch::{WatchConnection, WatchEvent, WatchEventKind, WatchStream};

/// The crate README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct CrateReadmeDoctests;

/// The project README's SDK example, compiled as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ProjectReadmeDoctests;
