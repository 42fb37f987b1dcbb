//! A server certificate that follows its files, for the broker's gRPC
//! and the injector's webhook.
//!
//! cert-manager (or an operator) renews a certificate by replacing the
//! files; [`ReloadingCert::spawn_reloader`] checks them every few seconds
//! and, when their content changed and the new pair is whole (the key is the
//! certificate's), swaps the [`CertifiedKey`] that new handshakes use. Open
//! connections keep their session, so no stream drops. A new pair that does
//! not load is logged and the last good one stays.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use ring::digest::{SHA256, digest};
use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// How often the files are checked by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Why a certificate and key could not be loaded. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate")]
    NoCertificate(String),
    #[error("{0}: no PEM private key")]
    NoKey(String),
    #[error("the private key does not fit the certificate, or is of an unsupported kind")]
    Mismatch,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate's bytes, its key's (zeroized on drop) and the SHA-256 of
/// both.
type ReadPair = (Vec<u8>, Zeroizing<Vec<u8>>, [u8; 32]);

/// The certificate and key files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// Reads both files (the key into a zeroizing buffer) and their
    /// fingerprint.
    fn read(&self) -> Result<ReadPair, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let cert = read(&self.cert)?;
        let key = Zeroizing::new(read(&self.key)?);
        let mut both = Zeroizing::new(Vec::with_capacity(cert.len() + key.len() + 1));
        both.extend_from_slice(&cert);
        both.push(0);
        both.extend_from_slice(&key);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest(&SHA256, &both).as_ref());
        Ok((cert, key, fingerprint))
    }

    /// The certified key the files hold.
    fn load(&self, cert: &[u8], key: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::NoCertificate(self.cert.display().to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.display().to_string()));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|_| TlsError::NoKey(self.key.display().to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, key, &provider)
            .map(Arc::new)
            .map_err(|_| TlsError::Mismatch)
    }
}

/// The server certificate new handshakes get: swapped whole when the files
/// change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: CertFiles,
    current: RwLock<(Arc<CertifiedKey>, [u8; 32])>,
}

impl ReloadingCert {
    /// Loads the files; an error here stops the broker (nothing to serve).
    pub fn load(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let (cert, key, fingerprint) = files.read()?;
        let certified = files.load(&cert, &key)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((certified, fingerprint)),
        }))
    }

    /// The certificate chain served now.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .cert
            .clone()
    }

    /// Reads the files again; swaps the certificate if they changed and
    /// load. `Ok(true)`: swapped; `Ok(false)`: unchanged; an error: the
    /// last good certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key, fingerprint) = self.files.read()?;
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == fingerprint {
            return Ok(false);
        }
        let certified = self.files.load(&cert, &key)?;
        // The lock is held only to swap two pointers.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (certified, fingerprint);
        Ok(true)
    }

    /// Checks the files every `interval` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // A file seen half-written is retried at the next tick; log a
            // failure once per distinct error, not every tick.
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(interval) => {}
                }
                let files = this.files.clone();
                let reloaded = {
                    let this = Arc::clone(&this);
                    tokio::task::spawn_blocking(move || this.reload()).await
                };
                match reloaded {
                    Ok(Ok(true)) => {
                        last_error = None;
                        tracing::info!(cert = %files.cert.display(), "reloaded the TLS certificate: new connections get it");
                    }
                    Ok(Ok(false)) => last_error = None,
                    Ok(Err(error)) => {
                        let text = error.to_string();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(%error, cert = %files.cert.display(), "TLS certificate not reloaded: keeping the last good one");
                        }
                        last_error = Some(text);
                    }
                    Err(error) => tracing::error!(%error, "TLS certificate reload task failed"),
                }
            }
        });
    }

    /// A rustls server configuration resolving to this certificate,
    /// offering `alpn` (`[b"h2"]` for gRPC, `[b"http/1.1"]` for a webhook).
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()).0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_changed_pair_is_swapped_and_a_bad_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let files = CertFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let (cert_a, key_a) = pair("a.example");
        std::fs::write(&files.cert, &cert_a).unwrap();
        std::fs::write(&files.key, &key_a).unwrap();
        let reloading = ReloadingCert::load(files.clone()).unwrap();
        let first = reloading.chain();
        assert!(!reloading.reload().unwrap(), "unchanged files: no swap");

        // Half a renewal: the new certificate, the old key.
        let (cert_b, key_b) = pair("b.example");
        std::fs::write(&files.cert, &cert_b).unwrap();
        assert!(matches!(reloading.reload(), Err(TlsError::Mismatch)));
        assert_eq!(reloading.chain(), first, "the last good one stays");
        std::fs::write(&files.key, &key_b).unwrap();
        assert!(reloading.reload().unwrap());
        assert_ne!(reloading.chain(), first);

        std::fs::write(&files.cert, "not a certificate").unwrap();
        assert!(reloading.reload().is_err());
        std::fs::remove_file(&files.key).unwrap();
        let error = reloading.reload().unwrap_err().to_string();
        assert!(error.contains("tls.key"), "{error}");
        assert!(!error.contains("PRIVATE KEY"), "{error}");
    }
}
