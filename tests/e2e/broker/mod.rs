//! The broker as a server: logs, metrics, reflection, TLS reload, replicas, delivery end to end.

mod delivery;
mod log_level;
mod metrics;
mod reflection;
mod replicas;
mod tls_reload;
