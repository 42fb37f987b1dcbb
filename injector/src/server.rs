//! HTTPS for the API server: `POST /mutate` (AdmissionReview), `GET /healthz`
//! and `/readyz` (probes). TLS with rustls (ring).
//!
//! The webhook's `failurePolicy: Fail` makes the injector's outage the
//! outage of every opted-in pod, so no caller may take its memory or its
//! connections:
//!
//! - **Bodies.** A body declared larger than [`MAX_BODY`] is refused with
//!   413 before a byte of it is read (a body without a length is cut there).
//!   Bodies being read and reviewed share a budget of [`BODY_BUDGET`] bytes,
//!   reserved by their declared length: more wait their turn, within their
//!   request's time. A review costs little more than its body (see
//!   [`crate::pod`]), so bodies stay within the Deployment's 64Mi limit.
//!   Reviews are parsed one at a time on a blocking thread, leaving the
//!   runtime's threads to handshakes and probes.
//! - **Handshakes.** A connection must finish its TLS handshake within
//!   [`HANDSHAKE_TIMEOUT`]. Handshakes in progress are counted apart from
//!   served connections, up to [`MAX_HANDSHAKES`]; past that the oldest is
//!   dropped, so sockets that never speak cannot hold the door shut.
//! - **Connections.** Once handshaken, a connection waits at most
//!   [`IDLE_TIMEOUT`] for each request's head (hyper's header read timeout,
//!   which also runs while a keep-alive connection idles), and each request
//!   has [`REQUEST_TIMEOUT`] for its body and its answer (408 after). A
//!   connection in use is never cut by age: the API server keeps its
//!   connections to a webhook open. Past [`MAX_CONNECTIONS`], a new one
//!   closes the oldest idle connection (or, if none is idle, the oldest).
//! - **Addresses.** With `--allow-cidr`, other addresses are turned away
//!   before the handshake (see [`crate::access`]).
//! - **The accept queue** is as deep as the kernel allows (4096), so a
//!   burst of sockets does not make the kernel drop a probe's SYN.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::{net::TcpListener, sync::Notify};

use crate::{access::AllowList, patch::Injection, review::review};

/// The largest AdmissionReview read. The API server refuses request bodies
/// over 3 MiB (and etcd stores objects up to 1.5 MiB), so a pod it can
/// store fits, with its old object on UPDATE.
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// Bytes of bodies read and reviewed at once: four of the largest, or
/// hundreds of ordinary ones (a pod is a few KiB).
pub const BODY_BUDGET: usize = 4 * MAX_BODY;
/// How long a connection has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handshaken connection waits for a request's head, also
/// between requests on a keep-alive connection.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request has for its body and its answer (the webhook's
/// own timeout is 5 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; past it the oldest is dropped.
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshaken connections at once; past it the oldest idle one is closed.
pub const MAX_CONNECTIONS: usize = 256;
/// hyper's read buffer per connection (a request head must fit).
const MAX_BUFFER: usize = 64 * 1024;

/// Connections the kernel queues for `accept` (capped by
/// `net.core.somaxconn`): a burst of sockets must not fill the queue, or a
/// probe's SYN is dropped and retried a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `address` with a deep accept queue.
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injection: Injection,
    allowed: AllowList,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        acceptor: tokio_rustls::TlsAcceptor::from(tls),
        injection,
        bodies: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET)),
        reviews: Arc::new(tokio::sync::Semaphore::new(1)),
        table: Table::default(),
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: give them a moment.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !allowed.allows(peer.ip()) {
            tracing::debug!(peer = %peer.ip(), "address not in --allow-cidr; connection closed");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, stop) = shared.table.start_handshake();
        tokio::spawn(connection(shared.clone(), stream, id, stop));
    }
}

/// What every connection shares.
struct Shared {
    acceptor: tokio_rustls::TlsAcceptor,
    injection: Injection,
    /// [`BODY_BUDGET`], in bytes.
    bodies: Arc<tokio::sync::Semaphore>,
    /// One review parsed at a time.
    reviews: Arc<tokio::sync::Semaphore>,
    table: Table,
}

/// One connection: the handshake, then its requests.
async fn connection(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    id: u64,
    stop: Arc<Notify>,
) {
    let handshake = HandshakeEntry {
        shared: &shared,
        id,
    };
    let tls = tokio::select! {
        _ = stop.notified() => {
            tracing::debug!("TLS handshake dropped: too many in progress");
            return;
        }
        // Boxed, as is what follows: the task of a socket that never
        // speaks stays small.
        accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(handshake_of(&shared.acceptor, stream))) => {
            match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            }
        }
    };
    drop(handshake);
    Box::pin(served(shared, tls, id)).await;
}

/// A handshaken connection's requests.
async fn served(
    shared: Arc<Shared>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    id: u64,
) {
    let slot = shared.table.start_serving(id);
    let _serving = ServingEntry {
        shared: &shared,
        id,
    };
    let service = {
        let (shared, slot) = (shared.clone(), slot.clone());
        service_fn(move |request| {
            let (shared, slot) = (shared.clone(), slot.clone());
            async move {
                let _busy = Busy::new(&slot);
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, handle(request, &shared)).await;
                Ok::<_, std::convert::Infallible>(answer.unwrap_or_else(|_| {
                    closing(reply(
                        StatusCode::REQUEST_TIMEOUT,
                        "text/plain",
                        "request timed out\n".into(),
                    ))
                }))
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = slot.stop.notified() => {
            if slot.force.load(Ordering::Relaxed) {
                tracing::debug!("connection closed: too many, none idle");
                return;
            }
            // Idle, or between writing an answer and reading the next
            // request: close once the answer is out.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, connection).await;
        }
    }
}

/// The TLS handshake, its state built only once the client has spoken: a
/// socket that never sends a byte costs its task and nothing more.
async fn handshake_of(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    stream.readable().await?;
    acceptor.accept(stream).await
}

async fn handle(request: Request<Incoming>, shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => {
            reply(StatusCode::OK, "text/plain", "ok\n".into())
        }
        (&Method::POST, "/mutate") => {
            let declared = request
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if declared.is_some_and(|length| length > MAX_BODY) {
                return too_large();
            }
            let reserve = declared.unwrap_or(MAX_BODY).max(1);
            // `reserve` is at most MAX_BODY, well within u32.
            let Ok(permit) = shared
                .bodies
                .clone()
                .acquire_many_owned(u32::try_from(reserve).unwrap_or(u32::MAX))
                .await
            else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                );
            };
            let Some(body) = read_body(request.into_body(), reserve).await else {
                return too_large();
            };
            // Reading a large review takes milliseconds of CPU: on a thread
            // of its own, one review at a time, so that the runtime's
            // threads keep a core for handshakes and probes meanwhile.
            let Ok(turn) = shared.reviews.clone().acquire_owned().await else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "shutting down\n".into(),
                );
            };
            // The permits go with the body: a request that times out leaves
            // its review running, and the body counted, until it ends.
            let reviewed = {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    let answer = review(&body, &shared.injection);
                    drop((body, turn, permit));
                    answer
                })
                .await
            };
            match reviewed {
                Ok(Ok(answer)) => reply(StatusCode::OK, "application/json", answer.to_string()),
                Ok(Err(message)) => reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("{message}\n"),
                ),
                Err(error) => {
                    tracing::error!(%error, "the review failed");
                    reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "internal error\n".into(),
                    )
                }
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// The body, read into one buffer of the declared size; `None` past
/// [`MAX_BODY`] or when the body cannot be read.
async fn read_body(mut body: Incoming, capacity: usize) -> Option<Vec<u8>> {
    let mut buffer = Vec::with_capacity(capacity.min(MAX_BODY));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.ok()?.into_data() else {
            continue;
        };
        if buffer.len() + data.len() > MAX_BODY {
            return None;
        }
        buffer.extend_from_slice(&data);
    }
    Some(buffer)
}

fn too_large() -> Response<Full<Bytes>> {
    closing(reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        "text/plain",
        format!("an AdmissionReview is at most {MAX_BODY} bytes\n"),
    ))
}

/// `response`, closing the connection after it (its body may be unread).
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The connections in progress, oldest first by id.
#[derive(Default)]
struct Table {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    next: u64,
    handshaking: BTreeMap<u64, Arc<Notify>>,
    serving: BTreeMap<u64, Arc<Slot>>,
}

/// A served connection: how many requests it is answering, and how to
/// close it.
#[derive(Default)]
struct Slot {
    busy: AtomicUsize,
    stop: Notify,
    /// Close at once rather than after the answer in progress.
    force: AtomicBool,
}

impl Table {
    /// Registers a handshake, dropping the oldest when there are too many.
    fn start_handshake(&self) -> (u64, Arc<Notify>) {
        let mut table = self.inner.lock();
        if table.handshaking.len() >= MAX_HANDSHAKES
            && let Some((_, oldest)) = table.handshaking.pop_first()
        {
            oldest.notify_one();
        }
        table.next += 1;
        let id = table.next;
        let stop = Arc::new(Notify::new());
        table.handshaking.insert(id, stop.clone());
        (id, stop)
    }

    /// Registers a served connection, closing the oldest idle one (or the
    /// oldest) when there are too many.
    fn start_serving(&self, id: u64) -> Arc<Slot> {
        let mut table = self.inner.lock();
        if table.serving.len() >= MAX_CONNECTIONS {
            let idle = table
                .serving
                .iter()
                .find(|(_, slot)| slot.busy.load(Ordering::Relaxed) == 0)
                .map(|(id, _)| *id);
            let evicted = match idle {
                Some(id) => table.serving.remove(&id),
                None => table.serving.pop_first().map(|(_, slot)| {
                    slot.force.store(true, Ordering::Relaxed);
                    slot
                }),
            };
            if let Some(slot) = evicted {
                slot.stop.notify_one();
            }
        }
        let slot = Arc::new(Slot::default());
        table.serving.insert(id, slot.clone());
        slot
    }
}

/// Removes a handshake from the table when it ends, however it ends.
struct HandshakeEntry<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for HandshakeEntry<'_> {
    fn drop(&mut self) {
        self.shared.table.inner.lock().handshaking.remove(&self.id);
    }
}

/// Removes a served connection from the table when it ends.
struct ServingEntry<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ServingEntry<'_> {
    fn drop(&mut self) {
        self.shared.table.inner.lock().serving.remove(&self.id);
    }
}

/// Marks a connection busy while one of its requests is answered.
struct Busy<'a>(&'a Slot);

impl<'a> Busy<'a> {
    fn new(slot: &'a Slot) -> Self {
        slot.busy.fetch_add(1, Ordering::Relaxed);
        Self(slot)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_handshake_makes_way() {
        let table = Table::default();
        let (first, stop) = table.start_handshake();
        for _ in 1..MAX_HANDSHAKES {
            table.start_handshake();
        }
        assert!(table.inner.lock().handshaking.contains_key(&first));
        table.start_handshake();
        assert!(!table.inner.lock().handshaking.contains_key(&first));
        // The evicted task is woken even if it was not waiting yet.
        let notified = stop.notified();
        tokio::pin!(notified);
        assert!(notified.as_mut().enable());
    }

    #[test]
    fn an_idle_connection_makes_way_before_a_busy_one() {
        let table = Table::default();
        let slots: Vec<_> = (0..MAX_CONNECTIONS as u64)
            .map(|id| table.start_serving(id))
            .collect();
        slots[0].busy.store(1, Ordering::Relaxed);
        table.start_serving(1000);
        let serving = &table.inner.lock().serving;
        assert!(serving.contains_key(&0), "busy, kept");
        assert!(!serving.contains_key(&1), "the oldest idle, closed");
        assert!(!slots[1].force.load(Ordering::Relaxed));
    }

    #[test]
    fn with_none_idle_the_oldest_is_closed_at_once() {
        let table = Table::default();
        let slots: Vec<_> = (0..MAX_CONNECTIONS as u64)
            .map(|id| table.start_serving(id))
            .collect();
        for slot in &slots {
            slot.busy.store(1, Ordering::Relaxed);
        }
        table.start_serving(1000);
        assert!(!table.inner.lock().serving.contains_key(&0));
        assert!(slots[0].force.load(Ordering::Relaxed));
    }
}
