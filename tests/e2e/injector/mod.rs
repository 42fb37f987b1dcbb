//! The admission webhook that adds the sidecar to pods.

mod access;
pub(crate) mod common;
mod env_pod;
mod load;
mod pod_checks;
mod proxies;
mod tls_reload;
mod updates;
mod vault_k8s;
mod webhook;
