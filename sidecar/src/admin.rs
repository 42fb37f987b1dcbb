//! The sidecar's small HTTP endpoints, for probes and for Jobs.
//!
//! The probe endpoint (`adminListen`), which the kubelet reaches on the pod's
//! address:
//! - `GET /ready`: 200 once every secret has been written, 503 before. A
//!   native sidecar's `startupProbe` points here, so the app container starts
//!   only when its files exist.
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]): files written,
//!   write failures, the applied version of each secret, when the last update
//!   was applied, reconnects. No value, token or file content.
//!
//! The quit endpoint (`quitListen`), bound to a loopback address only, so
//! that only the pod's own containers reach it:
//! - `POST /quitquitquit`: the sidecar exits 0, so a Job's pod can finish.
//!
//! Both are HTTP/1 and serve no secret. `/quitquitquit` on the probe port is
//! 404: whoever can reach the probe port must not be able to stop the sidecar.

use std::{convert::Infallible, future::Future, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};

/// What the endpoint reports and triggers.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Whether every secret has been written.
    pub ready: watch::Receiver<bool>,
    /// Woken by `/quitquitquit`; `None` on the probe endpoint, which then
    /// answers 404 for it.
    pub quit: Option<Arc<Notify>>,
}

/// Serves `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin endpoint: accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&req, &state)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin endpoint: connection ended");
            }
        });
    }
}

fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path(), &state.quit) {
        (&Method::GET, "/ready" | "/readyz", _) => {
            if *state.ready.borrow() {
                (StatusCode::OK, "ready\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (&Method::GET, "/healthz", _) => (StatusCode::OK, "ok\n"),
        // The probe endpoint only: the quit endpoint is for quitting.
        (&Method::GET, "/metrics", None) => {
            let mut response = Response::new(Full::new(Bytes::from(crate::metrics::render())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return response;
        }
        (&Method::POST, "/quitquitquit", Some(quit)) => {
            tracing::info!("quit requested over the loopback quit endpoint");
            quit.notify_one();
            (StatusCode::OK, "quitting\n")
        }
        (_, "/quitquitquit", None) => (StatusCode::NOT_FOUND, "not found\n"),
        (_, "/ready" | "/readyz" | "/healthz" | "/quitquitquit", _) => {
            (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
