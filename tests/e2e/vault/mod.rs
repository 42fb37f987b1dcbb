//! The Vault (OpenBao) store: auth, KV, the cache, degraded and late starts, limits, versions.

mod auth;
mod cache;
mod degraded;
mod kv;
mod late_start;
mod limits;
mod versioned_reads;
