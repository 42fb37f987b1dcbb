//! The Coffer sidecar.
//!
//! It presents the pod's projected token to the broker, writes each secret
//! into a file on an in-memory volume with the kubelet's atomic `..data`
//! protocol ([`writer`]), and keeps the files current as operators rotate.

pub mod config;
pub mod render;
pub mod run;
pub mod writer;

pub use config::Config;
pub use run::Sidecar;
