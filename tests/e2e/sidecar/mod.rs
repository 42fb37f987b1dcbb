//! The sidecar: files and formats, actions, readiness, reconnects, rotation.

mod actions;
mod app_owned;
mod check_config;
mod files;
mod format_consumers;
mod formats;
mod killed_mid_write;
mod metrics_paths;
mod once;
mod probe_idle_connections;
mod ready;
mod reconnect;
mod rotation;
