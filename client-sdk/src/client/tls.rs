//! TLS to the broker with a CA bundle that follows its file.
//!
//! The CA a sidecar trusts comes from a ConfigMap or a cert-manager
//! `ca.crt`, which change in place when the CA rotates. Each new connection
//! reads the file again and, if its content changed and holds certificates,
//! trusts the new roots; a connection already open keeps its session (a
//! watch stream goes on). A file that is gone or holds no certificate is
//! logged and the last good roots stay.

use std::{path::PathBuf, sync::Arc};

use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// The roots new connections trust, rebuilt when the file changes.
#[derive(Debug)]
pub(crate) struct ReloadingRoots {
    file: PathBuf,
    /// Roots given as PEM (`ca_pem`), trusted besides the file's.
    fixed: Option<Vec<u8>>,
    /// The file's content the configuration was built from, and it.
    current: Mutex<(Vec<u8>, Arc<ClientConfig>)>,
}

impl ReloadingRoots {
    /// Reads the file now: a missing or empty bundle is an error here.
    pub(crate) fn load(file: PathBuf, fixed: Option<Vec<u8>>) -> Result<Self, Error> {
        let pem = std::fs::read(&file).map_err(|source| Error::CaFile {
            path: file.clone(),
            source,
        })?;
        let config = client_config(&pem, fixed.as_deref())?;
        Ok(Self {
            file,
            fixed,
            current: Mutex::new((pem, config)),
        })
    }

    /// The configuration for a new connection: rebuilt first if the file's
    /// content changed and still holds certificates.
    async fn config(&self) -> Arc<ClientConfig> {
        let pem = match tokio::fs::read(&self.file).await {
            Ok(pem) => pem,
            Err(error) => {
                tracing::warn!(file = %self.file.display(), %error, "CA bundle unreadable: keeping the last good roots");
                return self.current().1;
            }
        };
        let mut current = self.current.lock();
        if current.0 != pem {
            match client_config(&pem, self.fixed.as_deref()) {
                Ok(config) => {
                    tracing::info!(file = %self.file.display(), "reloaded the CA bundle: new connections trust it");
                    *current = (pem, config);
                }
                Err(error) => {
                    tracing::warn!(file = %self.file.display(), %error, "CA bundle not reloaded: keeping the last good roots");
                }
            }
        }
        Arc::clone(&current.1)
    }

    fn current(&self) -> (Vec<u8>, Arc<ClientConfig>) {
        let current = self.current.lock();
        (current.0.clone(), Arc::clone(&current.1))
    }

    /// Connects to `host:port` and verifies the broker as `name` against
    /// the roots of the moment.
    pub(crate) async fn connect(
        &self,
        host: &str,
        port: u16,
        name: ServerName<'static>,
    ) -> std::io::Result<TokioIo<TlsStream<TcpStream>>> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        let config = self.config().await;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(TokioIo::new(tls))
    }
}

/// A client configuration trusting the certificates of `pem` and `fixed`,
/// speaking HTTP/2 (gRPC).
fn client_config(pem: &[u8], fixed: Option<&[u8]>) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for bundle in std::iter::once(pem).chain(fixed) {
        for cert in CertificateDer::pem_slice_iter(bundle) {
            let cert = cert.map_err(|_| Error::Tls("the CA bundle is not PEM".into()))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("a CA certificate was refused: {e}")))?;
        }
    }
    if roots.is_empty() {
        return Err(Error::Tls("the CA bundle holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["ca.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }

    #[tokio::test]
    async fn the_roots_follow_the_file_and_a_bad_file_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.crt");
        std::fs::write(&file, ca_pem()).unwrap();
        let roots = ReloadingRoots::load(file.clone(), None).unwrap();
        let first = roots.config().await;
        assert!(
            Arc::ptr_eq(&first, &roots.config().await),
            "unchanged: kept"
        );
        std::fs::write(&file, "not PEM").unwrap();
        assert!(Arc::ptr_eq(&first, &roots.config().await), "bad: kept");
        std::fs::remove_file(&file).unwrap();
        assert!(Arc::ptr_eq(&first, &roots.config().await), "gone: kept");
        std::fs::write(&file, ca_pem()).unwrap();
        assert!(!Arc::ptr_eq(&first, &roots.config().await), "changed: new");
        std::fs::write(&file, "").unwrap();
        assert!(ReloadingRoots::load(file, None).is_err());
    }
}
