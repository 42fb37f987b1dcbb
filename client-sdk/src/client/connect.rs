//! From a [`ClientBuilder`] to a channel: Unix socket, verified TLS (with a
//! CA file that is followed as it changes), or plaintext to loopback only.

use std::{path::PathBuf, sync::Arc};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use super::{ClientBuilder, tls::ReloadingRoots};
use crate::Error;

impl ClientBuilder {
    /// The channel to the endpoint; `lazy` connects on first use.
    pub(super) async fn channel(&self, lazy: bool) -> Result<Channel, Error> {
        if let Some(path) = self.endpoint.strip_prefix("unix:") {
            self.unix_channel(PathBuf::from(path), lazy).await
        } else if let Some(file) = self.reloading_ca_file()? {
            self.reloading_channel(file, lazy).await
        } else {
            self.tcp_channel(lazy).await
        }
    }

    async fn unix_channel(&self, path: PathBuf, lazy: bool) -> Result<Channel, Error> {
        // The URI is ignored by the connector; it only has to parse.
        let endpoint =
            Endpoint::from_static("http://coffer.sock").connect_timeout(self.connect_timeout);
        let endpoint = match self.timeout {
            Some(timeout) => endpoint.timeout(timeout),
            None => endpoint,
        };
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        });
        if lazy {
            Ok(endpoint.connect_with_connector_lazy(connector))
        } else {
            endpoint
                .connect_with_connector(connector)
                .await
                .map_err(|e| Error::transport(&e))
        }
    }

    /// TLS by tonic (a CA given as PEM, the system roots, or a CA file read
    /// once beside them), or plaintext to loopback.
    async fn tcp_channel(&self, lazy: bool) -> Result<Channel, Error> {
        let tls = self.check_transport()?;
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if tls {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(|e| Error::Tls(e.to_string()))?;
        }
        if lazy {
            Ok(endpoint.connect_lazy())
        } else {
            endpoint.connect().await.map_err(|e| Error::transport(&e))
        }
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls = ClientTlsConfig::new();
        let mut has_ca = false;
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
            has_ca = true;
        }
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|source| Error::CaFile {
                path: path.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
            has_ca = true;
        }
        if self.system_roots.unwrap_or(!has_ca) {
            tls = tls.with_native_roots();
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }

    /// The CA file to follow, when TLS is verified against a
    /// [`ca_file`](Self::ca_file) alone (with the system roots too, the
    /// file is read once).
    fn reloading_ca_file(&self) -> Result<Option<PathBuf>, Error> {
        match &self.ca_file {
            Some(file) if self.check_transport()? && !self.system_roots.unwrap_or(false) => {
                Ok(Some(file.clone()))
            }
            _ => Ok(None),
        }
    }

    /// A channel whose every new connection trusts the CA file as it is
    /// then ([`ReloadingRoots`]): TLS is made by our connector, so tonic
    /// sees `http://` for the socket while requests carry `https://`.
    async fn reloading_channel(&self, file: PathBuf, lazy: bool) -> Result<Channel, Error> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let host = uri
            .host()
            .ok_or_else(|| Error::Endpoint(self.endpoint.clone()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let name = self.server_name.clone().unwrap_or_else(|| host.clone());
        let name = ServerName::try_from(name.clone())
            .map_err(|_| Error::Tls(format!("{name:?} is not a TLS server name")))?;
        let roots = Arc::new(ReloadingRoots::load(file, self.ca_pem.clone())?);
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let origin: Uri = format!("https://{authority}")
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let mut endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?
            .origin(origin)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(timeout) = self.timeout {
            endpoint = endpoint.timeout(timeout);
        }
        let connector = tower::service_fn(move |_: Uri| {
            let (roots, host, name) = (Arc::clone(&roots), host.clone(), name.clone());
            async move { roots.connect(&host, port, name).await }
        });
        if lazy {
            Ok(endpoint.connect_with_connector_lazy(connector))
        } else {
            endpoint
                .connect_with_connector(connector)
                .await
                .map_err(|e| Error::transport(&e))
        }
    }

    /// Whether the endpoint needs TLS (`https://`), after refusing plaintext
    /// `http://` to anything but a loopback address unless
    /// [`danger_insecure_plaintext`](Self::danger_insecure_plaintext) says so.
    fn check_transport(&self) -> Result<bool, Error> {
        use tonic::codegen::http::uri::Scheme;
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|_| Error::Endpoint(self.endpoint.clone()))?;
        let host = uri.host().unwrap_or_default();
        match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTPS => Ok(true),
            Some(scheme) if *scheme == Scheme::HTTP => {
                // Only an address literal: a name could resolve anywhere.
                let loopback = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
                if loopback {
                    Ok(false)
                } else if self.insecure_plaintext {
                    tracing::warn!(
                        host,
                        "danger_insecure_plaintext: the token and secrets cross the network unencrypted"
                    );
                    Ok(false)
                } else {
                    Err(Error::Plaintext(host.to_string()))
                }
            }
            _ => Err(Error::Endpoint(self.endpoint.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Client, Error, TokenSource};

    async fn lazy(endpoint: &str, danger: bool) -> Result<Client, Error> {
        Client::builder(endpoint)
            .token(TokenSource::from_static("t".to_string()))
            .danger_insecure_plaintext(danger)
            .connect_lazy()
            .await
    }

    #[tokio::test]
    async fn plaintext_is_refused_to_anything_but_loopback() {
        for endpoint in [
            "http://10.0.0.1:8443",
            "http://broker.example:80",
            "http://localhost:8443",
            "http://0.0.0.0:8443",
            "http://[::ffff:10.0.0.1]:8443",
            "HTTP://10.0.0.1:8443",
        ] {
            match lazy(endpoint, false).await {
                Err(Error::Plaintext(_)) => {}
                other => panic!("{endpoint}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn plaintext_to_loopback_and_tls_anywhere_are_allowed() {
        for endpoint in [
            "http://127.0.0.1:8443",
            "http://127.8.0.1:1",
            "http://[::1]:8443",
            "https://10.0.0.1:8443",
            "https://broker.example:443",
        ] {
            assert!(lazy(endpoint, false).await.is_ok(), "{endpoint}");
        }
    }

    #[tokio::test]
    async fn the_danger_door_opens_plaintext_to_any_host() {
        assert!(lazy("http://10.0.0.1:8443", true).await.is_ok());
        // It does not make other schemes acceptable.
        assert!(matches!(
            lazy("ftp://10.0.0.1:21", true).await,
            Err(Error::Endpoint(_))
        ));
    }

    #[test]
    fn the_refusal_names_the_host_and_the_way_out() {
        let text = Error::Plaintext("10.0.0.1".into()).to_string();
        assert!(
            text.contains("10.0.0.1") && text.contains("https://"),
            "{text}"
        );
    }
}
