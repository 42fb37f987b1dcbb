//! The Coffer sidecar.
//!
//! It presents the pod's projected token to the broker, writes each secret
//! into a file on an in-memory volume with the kubelet's atomic `..data`
//! protocol ([`writer`]) in one of several formats ([`render`]), tells the
//! app when its files change ([`action`]), reports readiness ([`admin`]),
//! and keeps the files current as operators rotate ([`run`]). It can also
//! hold a credential itself and proxy the app's connections ([`proxy`]).

pub mod action;
pub mod admin;
pub mod config;
mod go_filters;
pub mod metrics;
pub mod proxy;
pub mod render;
pub mod run;
pub mod writer;

pub use config::Config;
pub use run::Sidecar;
