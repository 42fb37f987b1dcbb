//! What the Coffer binaries share, so that each idea has one mechanism.
//!
//! - [`Backoff`]: the one jittered exponential backoff, for every loop that
//!   retries or reconnects (the broker's Vault calls, the SDK's reads and
//!   watches, the sidecar's watch and actions).
//! - [`run_main`] (feature `main`): how a binary starts: logging from the
//!   shared `--log-format` flag, the tokio runtime, and the exit status of a
//!   failure, [`EX_USAGE`] (64) for a configuration mistake.
//! - [`http`] and [`metrics`] (feature `metrics`): the one small HTTP/1
//!   server behind the broker's `--metrics-listen` and the sidecar's probe
//!   and quit endpoints, and the one rendering of a Prometheus registry.
//!
//! # Features
//!
//! The SDK is a library that applications link, so the default build is the
//! backoff alone (its only dependency is `ring`, for the jitter, which the
//! SDK already has through rustls). Binary plumbing sits behind features, so
//! an application linking the SDK does not pull in a log subscriber, clap or
//! an HTTP server:
//!
//! | feature   | adds                                                  | pulls in |
//! |-----------|-------------------------------------------------------|----------|
//! | (none)    | [`Backoff`]                                           | ring |
//! | `main`    | [`run_main`], [`LogFormat`], [`shutdown_signal`], [`EX_USAGE`], [`usage`] | tokio (runtime, signals), tracing-subscriber, clap, anyhow |
//! | `metrics` | [`http::serve`], [`metrics::render`]                  | hyper, prometheus-client |
//!
//! ```
//! use std::time::Duration;
//! use coffer_runtime::Backoff;
//!
//! let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
//! let first = backoff.next_delay();
//! assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
//! ```

mod backoff;
#[cfg(feature = "main")]
mod exit;
#[cfg(feature = "metrics")]
pub mod http;
#[cfg(feature = "main")]
mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "main")]
mod run;
#[cfg(feature = "main")]
mod signal;

pub use backoff::Backoff;
#[cfg(feature = "main")]
pub use exit::{EX_USAGE, UsageError, usage};
#[cfg(feature = "main")]
pub use logging::{LogFormat, init_logging};
#[cfg(feature = "main")]
pub use run::{Main, run_main};
#[cfg(feature = "main")]
pub use signal::shutdown_signal;
