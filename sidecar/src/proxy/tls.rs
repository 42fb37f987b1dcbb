//! TLS towards a proxy's upstream: the configured CA bundle (or the
//! system's roots), the server's certificate always verified.

use std::sync::Arc;

use hyper_rustls::ConfigBuilderExt;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

use super::UpstreamTls;

/// A client configuration for `tls`, with `alpn` protocols offered.
pub(super) fn client_config(
    tls: &UpstreamTls,
    alpn: &[&[u8]],
) -> std::io::Result<Arc<ClientConfig>> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?;
    let builder = match &tls.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| invalid(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!("{}: no certificate", path.display())));
            }
            builder.with_root_certificates(roots)
        }
        None => builder.with_native_roots()?,
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The name the upstream's certificate must carry: `server_name`, else the
/// host of `host:port`.
pub(super) fn server_name(
    tls: &UpstreamTls,
    host_port: &str,
) -> std::io::Result<ServerName<'static>> {
    let host = match &tls.server_name {
        Some(name) => name.as_str(),
        None => host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']'),
    };
    ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}
