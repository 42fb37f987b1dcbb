//! The metrics page: the registry rendered and served at `GET /metrics` by
//! the one small HTTP server the binaries share (`coffer-runtime`).

use std::future::Future;

use coffer_runtime::{http, metrics};
use tokio::net::TcpListener;

use super::families::METRICS;

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    metrics::render(&METRICS.registry.lock())
}

/// Serves `GET /metrics` over plain HTTP/1 on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    http::serve(
        "metrics",
        listener,
        http::Limits::default(),
        metrics::metrics_only(render),
        shutdown,
    )
    .await;
}
