//! The one small HTTP/1 server of the Coffer binaries: the broker's
//! `--metrics-listen` endpoint and the sidecar's probe and quit endpoints.
//!
//! It takes a bound listener and a shutdown future (as mini-redis's
//! `server::run` does) and a handler that answers a request synchronously:
//! these endpoints report state, they do not wait on anything. What differs
//! between the endpoints is in [`Limits`]: the sidecar's probe port, open to
//! the pod network in a 32Mi container, serves few connections, one request
//! each, within deadlines, and sheds the oldest connection for a new one;
//! the broker's metrics port keeps hyper's defaults.

use std::{collections::VecDeque, convert::Infallible, future::Future, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

/// The body of every answer: small and complete.
pub type Body = Full<Bytes>;

/// The pause after a failed accept (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// hyper's least allowed read buffer, which bounds a request's head.
pub const MIN_REQUEST_HEAD: usize = 8192;

/// How much one endpoint serves. [`Limits::default`] is hyper's defaults:
/// no bound on connections, keep-alive, no deadlines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Connections served at once. Beyond it a new connection is not
    /// queued: the oldest open one is closed to make room, so idle sockets
    /// cannot lock out a probe. `None`: no bound.
    pub max_connections: Option<usize>,
    /// Called once for each connection closed to make room (a metric).
    pub on_shed: Option<fn()>,
    /// Time to send a request's headers; a connection that sends nothing
    /// is closed after it.
    pub header_timeout: Option<Duration>,
    /// The longest a connection lives, reading the answer included.
    pub connection_deadline: Option<Duration>,
    /// Serve one request per connection (no keep-alive), so no connection
    /// idles between requests holding a slot.
    pub one_request_per_connection: bool,
    /// The largest request head read, at least [`MIN_REQUEST_HEAD`].
    pub max_request_head: Option<usize>,
}

/// Serves HTTP/1 on `listener`, answering each request with `handler`,
/// until `shutdown` resolves; then closes the connections still open.
///
/// `name` prefixes the log lines (`NAME: accept failed`).
pub async fn serve<H>(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(&Request<Incoming>) -> Response<Body> + Clone + Send + Sync + 'static,
{
    tokio::pin!(shutdown);
    // Oldest first. Only this loop touches it, so it needs no lock.
    let mut open: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "{name}: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        open.retain(|task| !task.is_finished());
        if limits.max_connections.is_some_and(|max| open.len() >= max)
            && let Some(oldest) = open.pop_front()
        {
            // Dropping the connection closes its socket.
            oldest.abort();
            if let Some(on_shed) = limits.on_shed {
                on_shed();
            }
        }
        let task = tokio::spawn(serve_connection(name, stream, limits, handler.clone()));
        open.push_back(task.abort_handle());
    }
    for task in open {
        task.abort();
    }
}

/// The requests of one connection, within `limits`.
async fn serve_connection<H>(name: &'static str, stream: TcpStream, limits: Limits, handler: H)
where
    H: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let response = handler(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    if let Some(timeout) = limits.header_timeout {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    }
    if limits.one_request_per_connection {
        builder.keep_alive(false);
    }
    if let Some(max) = limits.max_request_head {
        builder.max_buf_size(max.max(MIN_REQUEST_HEAD));
    }
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let served = match limits.connection_deadline {
        Some(deadline) => match tokio::time::timeout(deadline, connection).await {
            Ok(served) => served,
            Err(_) => {
                tracing::debug!("{name}: connection closed at its deadline");
                return;
            }
        },
        None => connection.await,
    };
    if let Err(error) = served {
        tracing::debug!(%error, "{name}: connection ended");
    }
}

/// An answer with `status` and a short text `body`.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    fn hello(request: &Request<Incoming>) -> Response<Body> {
        match request.uri().path() {
            "/hello" => text(StatusCode::OK, "hello\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// A server of [`hello`] within `limits` on a loopback port, forever.
    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let forever = std::future::pending();
        tokio::spawn(serve("test", listener, limits, hello, forever));
        addr
    }

    #[tokio::test]
    async fn the_handler_answers_until_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve("test", listener, Limits::default(), hello, async {
            let _ = stopped.await;
        }));
        let answer = get(addr, "/hello").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("hello\n"), "{answer}");
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    static SHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[tokio::test]
    async fn past_the_bound_the_oldest_connection_is_shed() {
        let limits = Limits {
            max_connections: Some(2),
            on_shed: Some(|| {
                SHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
            ..Limits::default()
        };
        let addr = start(limits).await;
        // Two idle connections fill the bound; the third request is served
        // and the first idle one closed.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(get(addr, "/hello").await.starts_with("HTTP/1.1 200"));
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        assert_eq!(SHED.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let limits = Limits {
            header_timeout: Some(Duration::from_millis(100)),
            connection_deadline: Some(Duration::from_secs(5)),
            one_request_per_connection: true,
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "still open after the header timeout");
    }
}
