//! The end-to-end toolkit: starts the real `coffer-broker`, `coffer-sidecar`
//! and `cofferctl` binaries as processes on loopback ports, mints tokens
//! shaped like the kubelet's from real RSA and EC keys, and captures every
//! process's output so tests can search it for leaked secrets. The tests
//! themselves are one binary, `tests/e2e`.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; the
//! README's test command does it).
//!
//! The rooms: [`broker`] (one builder for every broker a test needs),
//! [`sidecar`], [`coffer_env`], [`cofferctl`], [`process`] (child processes and waiting),
//! [`tokens`], [`policy`], [`http`]; [`load`] (many pods with their own
//! identities, and the checks of what each received); and the backends and tools some tests
//! start: [`openbao`], [`openbao_cluster`] (a 3-node raft cluster, with
//! [`fault`]'s proxy for network faults), [`postgres`], [`kube`], [`https`], [`deploy`],
//! [`browser`], [`console`], [`tmpfs`].

pub mod broker;
pub mod browser;
pub mod coffer_env;
pub mod cofferctl;
pub mod console;
pub mod deploy;
pub mod fault;
pub mod http;
pub mod https;
pub mod kube;
pub mod load;
pub mod openbao;
pub mod openbao_cluster;
pub mod policy;
pub mod postgres;
pub mod process;
pub mod serial;
pub mod sidecar;
pub mod tmpfs;
pub mod tokens;

pub use broker::{BrokerBuilder, BrokerProcess, audit_records, default_auth_args, jwks_file_auth};
pub use cofferctl::{Ctl, audit_verify, cofferctl, cofferctl_with_input};
pub use http::{free_port, get_page, http, parse_response};
pub use openbao::{vault_args, vault_broker};
pub use policy::{POLICY, policy_of, policy_with, rule};
pub use process::{Process, binary, eventually, fixture, strip_ansi};
pub use sidecar::{HupCounter, SidecarOptions, SidecarProcess, password_of, password_sidecar};
pub use tmpfs::TinyTmpfs;
pub use tokens::{AUDIENCE, ISSUER, Issuers, Key, claims, mint, mint_claims, pod_token, web_token};
