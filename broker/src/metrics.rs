//! Prometheus metrics, served on the optional `--metrics-listen` endpoint.
//!
//! Labels are fixed, low-cardinality names only: an authentication failure
//! is counted under its [`AuthError::reason`](crate::auth::AuthError::reason),
//! never under anything taken from the token. The counters are process-wide
//! statics because failures are counted where errors become statuses
//! (`crate::error`), which sees no broker instance.

use std::{
    convert::Infallible,
    future::Future,
    sync::{LazyLock, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::net::TcpListener;

/// The `reason` label of an authentication failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// An `AuthError::reason()`.
    pub reason: &'static str,
}

/// The `result` label of a verification-cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `hit` or `miss`.
    pub result: &'static str,
}

struct Metrics {
    auth_failures: Family<ReasonLabel, Counter>,
    auth_cache: Family<CacheLabel, Counter>,
    registry: Mutex<Registry>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let auth_failures = Family::<ReasonLabel, Counter>::default();
    let auth_cache = Family::<CacheLabel, Counter>::default();
    let mut registry = Registry::with_prefix("coffer");
    registry.register(
        "auth_failures",
        "Requests refused as unauthenticated, by precise reason",
        auth_failures.clone(),
    );
    registry.register(
        "auth_cache_lookups",
        "Verification cache lookups, by result",
        auth_cache.clone(),
    );
    Metrics {
        auth_failures,
        auth_cache,
        registry: Mutex::new(registry),
    }
});

/// Counts one authentication failure.
pub fn auth_failure(reason: &'static str) {
    METRICS
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// How many failures were counted for `reason`.
pub fn auth_failures(reason: &'static str) -> u64 {
    METRICS
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .get()
}

/// Counts one verification-cache lookup.
pub fn auth_cache(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    METRICS
        .auth_cache
        .get_or_create(&CacheLabel { result })
        .inc();
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let registry = METRICS
        .registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// Serves `GET /metrics` over plain HTTP/1 on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                Ok::<_, Infallible>(respond(&request))
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics: connection ended");
            }
        });
    }
}

fn respond(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        let mut missing = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *missing.status_mut() = StatusCode::NOT_FOUND;
        return missing;
    }
    let mut ok = Response::new(Full::new(Bytes::from(render())));
    ok.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let before = auth_failures("unknown_kid");
        auth_failure("unknown_kid");
        assert_eq!(auth_failures("unknown_kid"), before + 1);
        assert!(
            render().contains("coffer_auth_failures_total{reason=\"unknown_kid\"}"),
            "{}",
            render()
        );
    }
}
