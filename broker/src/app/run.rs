//! Serving a built broker: on the listeners it is given, until the
//! shutdown future resolves.

use std::{future::Future, path::PathBuf};

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;

use super::{App, AppError};
use crate::{
    server::{self, ListenAddr},
    tls::serve_tls,
};

/// Where gRPC is served: a bound TCP or Unix socket.
#[derive(Debug)]
pub enum Listener {
    /// A bound TCP socket.
    Tcp(TcpListener),
    /// A bound Unix socket and its path, removed when serving ends.
    Unix(UnixListener, PathBuf),
}

/// Every listener a broker serves on.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: the broker's services, health and reflection.
    pub grpc: Listener,
    /// Prometheus metrics at `/metrics`, if served.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// gRPC on `listener`, no metrics endpoint.
    fn from(listener: TcpListener) -> Self {
        Self {
            grpc: Listener::Tcp(listener),
            metrics: None,
        }
    }
}

impl Listener {
    /// Binds `addr`; a Unix socket left by an earlier run is replaced.
    pub async fn bind(addr: &ListenAddr) -> Result<Self, AppError> {
        match addr {
            ListenAddr::Tcp(addr) => {
                TcpListener::bind(addr)
                    .await
                    .map(Self::Tcp)
                    .map_err(|source| AppError::Bind {
                        what: addr.to_string(),
                        source,
                    })
            }
            ListenAddr::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                UnixListener::bind(path)
                    .map(|listener| Self::Unix(listener, path.clone()))
                    .map_err(|source| AppError::Bind {
                        what: path.display().to_string(),
                        source,
                    })
            }
        }
    }

    /// The bound address as clients name it: `HOST:PORT` or `unix:/path`.
    pub fn address(&self) -> Result<String, AppError> {
        Ok(match self {
            Self::Tcp(listener) => listener.local_addr()?.to_string(),
            Self::Unix(_, path) => format!("unix:{}", path.display()),
        })
    }
}

impl App {
    /// Binds the configured gRPC address, then the metrics address if one
    /// is configured.
    pub async fn bind(&self) -> Result<Listeners, AppError> {
        let metrics = match self.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind {
                        what: format!("metrics on {addr}"),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Listeners {
            grpc: Listener::bind(&self.listen).await?,
            metrics,
        })
    }

    /// Serves on `listeners` until `shutdown` resolves: watch streams end
    /// (`UNAVAILABLE`) as shutdown begins, and the audit trail is flushed
    /// before this returns.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AppError> {
        let Self {
            broker,
            addr_file,
            tls,
            policy_reload,
            ..
        } = self;
        // Ends the metrics endpoint with the broker, however serving ends.
        let stop = CancellationToken::new();
        let _stop_metrics = stop.clone().drop_guard();
        if let Some(metrics) = listeners.metrics {
            tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
            tokio::spawn(crate::metrics::serve(
                metrics,
                stop.clone().cancelled_owned(),
            ));
        }
        if let Some(reload) = policy_reload {
            crate::reload::spawn(broker.clone(), reload.path, reload.interval, reload.loaded);
        }
        if let Some((cert, interval)) = &tls
            && !interval.is_zero()
        {
            cert.spawn_reloader(*interval, broker.shutdown_token());
        }
        let tls = match &tls {
            Some((cert, _)) => Some(cert.server_config(&[b"h2"])?),
            None => None,
        };
        announce(&listeners.grpc.address()?, addr_file.as_deref())?;
        let at_shutdown = broker.clone();
        let served = match listeners.grpc {
            Listener::Tcp(listener) => {
                // Accepted sockets do not inherit TCP_NODELAY: without it a
                // watch update can sit ~40 ms in Nagle's buffer waiting for
                // a delayed ACK.
                let incoming =
                    tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |s| {
                        if let Ok(stream) = &s {
                            let _ = stream.set_nodelay(true);
                        }
                        s
                    });
                match tls {
                    Some(tls) => {
                        server::serve(broker, None, serve_tls(incoming, tls), shutdown).await
                    }
                    None => server::serve(broker, None, incoming, shutdown).await,
                }
            }
            Listener::Unix(listener, path) => {
                let incoming = UnixListenerStream::new(listener);
                let served = match tls {
                    Some(tls) => {
                        server::serve(broker, None, serve_tls(incoming, tls), shutdown).await
                    }
                    None => server::serve(broker, None, incoming, shutdown).await,
                };
                if served.is_ok() {
                    let _ = std::fs::remove_file(path);
                }
                served
            }
        };
        if served.is_ok() {
            tracing::info!("broker stopped");
        }
        at_shutdown.flush_audit().await;
        Ok(served?)
    }
}

/// Logs the bound address and writes it to `addr_file`.
fn announce(addr: &str, addr_file: Option<&std::path::Path>) -> Result<(), AppError> {
    tracing::info!(addr, "broker listening");
    if let Some(file) = addr_file {
        // Write then rename, so a reader never sees a partial address.
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, addr)?;
        std::fs::rename(&tmp, file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use coffer_proto::v1::{self, secret_broker_client::SecretBrokerClient};

    use super::*;
    use crate::{
        app::{AppConfig, AuthSource, PolicySource, StoreSource},
        auth::{
            jwt::{JwtVerifier, KeySet, VerifierConfig},
            signer::DevSigner,
        },
        policy::Policy,
        store::{SecretStore, SecretWrite, dev::DevStore},
    };

    const ISS: &str = "https://issuer.test";
    const POLICY: &str = "rules:\n  - name: web-reads\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [\"shop/*\"]\n    capabilities: [read]\n";

    #[tokio::test]
    async fn an_app_serves_in_process_on_an_ephemeral_port_until_shut_down() {
        let signer = DevSigner::generate(ISS).unwrap();
        let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes()).unwrap();
        let authn = JwtVerifier::new(VerifierConfig::new(ISS, "coffer"), keys);
        let store = Arc::new(DevStore::in_memory());
        store
            .put(
                &crate::path::SecretName::valid("shop/db"),
                SecretWrite::new(
                    coffer_proto::SecretData::Bytes(b"hunter2"[..].into()),
                    "text/plain",
                ),
            )
            .await
            .unwrap();
        let app = App::build(AppConfig::new(
            AuthSource::Ready(Arc::new(authn)),
            PolicySource::Fixed(Policy::from_yaml(POLICY).unwrap()),
            StoreSource::Ready(store),
        ))
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let running = tokio::spawn(app.run(listener.into(), stop.clone().cancelled_owned()));

        let mut client = SecretBrokerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let token = signer
            .mint(
                "coffer",
                "shop",
                "web",
                Some("web-0"),
                Duration::from_secs(60),
            )
            .unwrap();
        let mut request = tonic::Request::new(v1::GetSecretRequest {
            path: "shop/db".into(),
            version: None,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let secret = client
            .get_secret(request)
            .await
            .unwrap()
            .into_inner()
            .secret
            .unwrap();
        assert_eq!(secret.version, 1);

        stop.cancel();
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the app stops at shutdown")
            .unwrap()
            .unwrap();
    }
}
