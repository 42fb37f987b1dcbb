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
