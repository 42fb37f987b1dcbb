//! The sidecar's small HTTP endpoints, for probes and for Jobs.
//!
//! The probe endpoint (`adminListen`), which the kubelet reaches on the pod's
//! address:
//! - `GET /ready`: 200 once every secret has been written, 503 before. A
//!   native sidecar's `startupProbe` points here, so the app container starts
//!   only when its files exist.
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]): counts only
//!   (files written, write failures, updates, reconnects, connections shed)
//!   and when the last update was applied. No value, token, file content,
//!   secret path or version: the port is reachable from the pod network.
//!
//! The quit endpoint (`quitListen`), bound to a loopback address only, so
//! that only the pod's own containers reach it:
//! - `POST /quitquitquit`: the sidecar exits 0, so a Job's pod can finish.
//!
//! Both are HTTP/1 and serve no secret. `/quitquitquit` on the probe port is
//! 404: whoever can reach the probe port must not be able to stop the sidecar.
//!
//! The probe port listens on the pod's address, so anything on the pod
//! network can open connections to it, and the sidecar runs in 32Mi. Only
//! the kubelet and Prometheus have business there, a request at a time, so
//! the server is small on purpose: at most [`MAX_CONNECTIONS`] connections
//! at once, one request per connection (no keep-alive: an idle connection
//! would hold a slot between scrapes), [`HEADER_TIMEOUT`] to send the
//! request's headers (a connection that sends nothing is idle, and closed
//! then) and [`CONNECTION_DEADLINE`] for the whole exchange. A connection
//! beyond the limit is not queued: the oldest open one is closed to make
//! room, so sockets left idle on the port cannot lock the kubelet out (a
//! probe, which sends its request at once, is closed unanswered only if
//! [`MAX_CONNECTIONS`] more connections arrive before it is served).

use std::{sync::Arc, time::Duration};

use coffer_runtime::{
    http::{self, Body, Limits},
    metrics,
};
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};

/// Connections served at once; the oldest is closed for a new one beyond it.
pub const MAX_CONNECTIONS: usize = 16;
/// Time to send a request's headers. A connection that sends nothing is
/// closed after it; keep-alive is off, so none idles between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, reading the answer included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The probe and quit endpoints' bounds (see the module's documentation).
const LIMITS: Limits = Limits {
    max_connections: Some(MAX_CONNECTIONS),
    on_shed: Some(crate::metrics::admin_connection_shed),
    header_timeout: Some(HEADER_TIMEOUT),
    connection_deadline: Some(CONNECTION_DEADLINE),
    one_request_per_connection: true,
    // hyper's least allowed: a probe's head is a few hundred bytes.
    max_request_head: Some(http::MIN_REQUEST_HEAD),
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
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handler = move |request: &Request<Incoming>| handle(request, &state);
    http::serve("admin endpoint", listener, LIMITS, handler, shutdown).await;
}

fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Body> {
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
        (&Method::GET, "/metrics", None) => return metrics::response(crate::metrics::render()),
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
    http::text(status, body)
}
