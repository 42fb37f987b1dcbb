//! Prometheus metrics, served on the optional `--metrics-listen` endpoint.
//!
//! Labels are fixed, low-cardinality names only: an authentication failure
//! is counted under its [`AuthError::reason`](crate::auth::AuthError::reason),
//! never under anything taken from the token. The counters are process-wide
//! statics because failures are counted where errors become statuses
//! (`crate::error`), which sees no broker instance.
//!
//! The rooms: `families.rs` declares every metric and registers it once;
//! `count.rs` is what the broker calls to count; `requests.rs` labels and
//! times gRPC requests; `process.rs` reads the `process_*` metrics and the
//! backend poll lag at each scrape; `http.rs` renders the page and serves it.

mod count;
mod families;
mod http;
mod process;
mod requests;

pub use count::{
    WatchOpen, audit_write_failure, auth_cache, auth_failure, auth_failures, backend_behind,
    backend_error, backend_failover, backend_node, backend_read, backend_throttled, lease_renewal,
    lease_state, policy_reload, propagation, set_max_watches, store_cache, watch_opened,
    watch_reauthentication, watch_reauthentications, watch_refused, watch_update_retried,
    watches_refused,
};
pub use families::{
    CacheLabel, KindLabel, NodeLabel, ReasonLabel, ResultLabel, RpcLabel, StateLabel,
};
pub use http::{render, serve};
pub use process::{Poller, poller_started};
pub use requests::{request, request_at, rpc_index, rpc_label};
