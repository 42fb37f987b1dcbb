//! The broker's TLS: a server certificate that follows its files
//! ([`ReloadingCert`], from `coffer-tls`, shared with the injector).
//!
//! TLS is terminated here rather than by tonic's fixed `ServerTlsConfig`:
//! [`serve_tls`] accepts connections, runs each handshake in its own task
//! (bounded in number and time, so a slow client holds up nobody) and hands
//! the finished streams to tonic.

use std::{sync::Arc, time::Duration};

pub use coffer_tls::{CertFiles, DEFAULT_RELOAD_INTERVAL, ReloadingCert, TlsError};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// The TLS streams of `incoming`'s connections, each handshake in a task of
/// its own (at most [`MAX_HANDSHAKES`] at once, each at most
/// [`HANDSHAKE_TIMEOUT`]). A failed handshake is logged at debug and
/// dropped; the stream ends when `incoming` does.
pub fn serve_tls<I, IO, IE>(
    incoming: I,
    config: Arc<ServerConfig>,
) -> impl Stream<Item = Result<tokio_rustls::server::TlsStream<IO>, std::io::Error>>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (done, accepted) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(connection) = incoming.next().await {
            // The server stopped taking connections (shutdown): stop too.
            if done.is_closed() {
                return;
            }
            let io = match connection {
                Ok(io) => io,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (acceptor, done) = (acceptor.clone(), done.clone());
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        let _ = done.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(accepted)
}
