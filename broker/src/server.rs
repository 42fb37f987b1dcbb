//! Serving the broker: gRPC services, health, reflection, TLS and shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use coffer_proto::v1::{
    secret_broker_server::SecretBrokerServer, secret_operator_server::SecretOperatorServer,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::{Server, ServerTlsConfig, server::Connected};

use crate::service::Broker;

/// The largest request message accepted.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The largest request header block accepted (HTTP/2 SETTINGS).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Where the broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Self::Unix(PathBuf::from(path))),
            Some(_) => Err("unix: needs a socket path".into()),
            None => s
                .parse()
                .map(Self::Tcp)
                .map_err(|_| format!("{s:?} is neither HOST:PORT nor unix:/path")),
        }
    }
}

impl ListenAddr {
    /// Whether plaintext is acceptable here without an explicit `--insecure`:
    /// only loopback and Unix sockets never leave the machine.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(addr) => addr.ip().is_loopback(),
            Self::Unix(_) => true,
        }
    }
}

/// Serves `broker` on `incoming` until `shutdown` resolves. Watch streams are
/// ended (with `UNAVAILABLE`) as shutdown begins, so draining is quick.
pub async fn serve<I, IO, IE, F>(
    broker: Broker,
    tls: Option<ServerTlsConfig>,
    incoming: I,
    shutdown: F,
) -> Result<(), tonic::transport::Error>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: Future<Output = ()>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SecretBrokerServer<Broker>>().await;
    health.set_serving::<SecretOperatorServer<Broker>>().await;

    if let Some(store_health) = broker.store_health() {
        // Before the first connection: a broker whose store is not up yet
        // (e.g. Vault not logged in) never reports SERVING, not even briefly.
        let serving = *store_health.borrow();
        report_store_health(&health, serving).await;
        tokio::spawn(forward_store_health(
            store_health,
            health.clone(),
            broker.shutdown_token(),
        ));
    }

    // Both reflection versions: v1 for current grpcurl, v1alpha for older
    // grpcurl, Postman and Evans, which speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(coffer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();

    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Above the 16 KiB token limit, so an oversized token reaches the
        // authenticator and is refused as `Unauthenticated` (too_large)
        // instead of as an HTTP 431 the client cannot interpret.
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES));
    let per_connection = broker.limits().requests_per_connection;
    if per_connection > 0 {
        // Shed, not queue: the excess gets RESOURCE_EXHAUSTED at once.
        builder = builder
            .concurrency_limit_per_connection(per_connection)
            .load_shed(true);
    }
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }

    let ending = broker.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending watch streams");
        health.set_not_serving::<SecretBrokerServer<Broker>>().await;
        ending.shut_down();
    };

    let mut router = builder
        .layer(RequestMetricsLayer)
        .add_service(health_service)
        .add_service(
            SecretBrokerServer::new(broker.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            SecretOperatorServer::new(broker).max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    // The descriptor sets are compiled in; failing to parse them is a build
    // bug, and the broker works without reflection.
    match reflection_v1 {
        Ok(reflection) => router = router.add_service(reflection),
        Err(error) => tracing::error!(%error, "reflection v1 disabled"),
    }
    match reflection_v1alpha {
        Ok(reflection) => router = router.add_service(reflection),
        Err(error) => tracing::error!(%error, "reflection v1alpha disabled"),
    }
    router.serve_with_incoming_shutdown(incoming, signal).await
}

/// Counts every gRPC request by method and status code, with its time to
/// the response headers (`coffer_grpc_requests_total`,
/// `coffer_grpc_request_duration_seconds`). A unary call that succeeds sends
/// its status in the trailers, so headers without `grpc-status` mean OK; a
/// failure is a trailers-only response whose headers carry the code.
#[derive(Debug, Clone, Copy)]
struct RequestMetricsLayer;

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetrics { inner }
    }
}

#[derive(Debug, Clone)]
struct RequestMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RequestMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The method's index, not its text: no allocation per request.
        let rpc = crate::metrics::rpc_index(request.uri().path());
        Counted {
            response: self.inner.call(request),
            rpc,
            started: std::time::Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response, counted when it arrives (not boxed: one
    /// allocation less per request).
    struct Counted<F> {
        #[pin]
        response: F,
        rpc: usize,
        started: std::time::Instant,
    }
}

impl<F, RB, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx));
        if let Ok(response) = &response {
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            crate::metrics::request_at(*this.rpc, code, this.started.elapsed());
        }
        std::task::Poll::Ready(response)
    }
}

/// Mirrors the store's health onto `grpc.health.v1`: the broker service is
/// NOT_SERVING while its store cannot serve (e.g. Vault sealed or gone past
/// the staleness limit).
async fn forward_store_health(
    mut store: tokio::sync::watch::Receiver<bool>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let serving = *store.borrow_and_update();
        if !serving {
            tracing::warn!("secret store cannot serve: reporting NOT_SERVING");
        }
        report_store_health(&reporter, serving).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = store.changed() => if changed.is_err() { return },
        }
    }
}

/// Sets the overall and the broker service's health from the store's.
async fn report_store_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <SecretBrokerServer<Broker> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}
