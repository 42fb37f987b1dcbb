//! The Coffer client SDK.
//!
//! Services use it to get and watch secrets from a Coffer broker directly,
//! authenticated by their Kubernetes service-account token, or to read the
//! files a Coffer sidecar mounted for them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), coffer::Error> {
//! use coffer::{Client, TokenSource};
//!
//! let client = Client::builder("https://coffer-broker.coffer.svc:8443")
//!     .ca_pem(std::fs::read("/etc/coffer/ca.pem")?)
//!     .token(TokenSource::projected())
//!     .connect()
//!     .await?;
//! let db = client.get("app/db#password").await?;
//! let password: &[u8] = db.bytes().expect("one key selects bytes");
//! # let _ = password;
//! # Ok(()) }
//! ```
//!
//! Values are held in zeroizing buffers; `Debug` prints `[REDACTED]` and there
//! is no `Display`.

mod client;
mod error;
pub mod files;
mod secret;
mod token;

#[cfg(feature = "cli")]
pub mod cli;

pub use client::{Client, ClientBuilder, SecretStream, VersionAction, WatchEvent, WatchEventKind};
pub use coffer_proto::{SecretBytes, SecretData};
pub use error::Error;
pub use secret::Secret;
pub use token::TokenSource;
pub use tonic::Code;

/// The generated contract, for callers that need the raw messages.
pub use coffer_proto::v1 as proto;
