//! The metrics page: rendered in the Prometheus text format and served at
//! `GET /metrics`.

use std::{convert::Infallible, future::Future};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use tokio::net::TcpListener;

use super::families::METRICS;

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    let registry = METRICS.registry.lock();
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
