//! A small HTTPS client for OIDC discovery, JWKS and TokenReview: hyper with
//! rustls on `ring`, a configurable CA bundle, a timeout on every request,
//! a bounded response body, and optionally the broker's own bearer token —
//! sent only to the one origin (scheme, host, port) it is meant for, so a
//! discovery document naming a `jwks_uri` elsewhere never receives it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode, header};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

/// The default timeout of one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The `Accept` of discovery documents and TokenReviews.
pub const ACCEPT_JSON: &str = "application/json";
/// The `Accept` of a JWKS fetch. The Kubernetes API server serves
/// `/openid/v1/jwks` only as `application/jwk-set+json` and answers any other
/// `Accept` with 406 Not Acceptable; other issuers serve `application/json`.
pub const ACCEPT_JWKS: &str = "application/jwk-set+json, application/json";

/// Why a request failed. Messages name URLs and statuses, never tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("CA bundle {path}: {reason}")]
    CaBundle { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("invalid URL {0:?}: only https:// URLs are allowed")]
    Url(String),
    #[error("cannot read the credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("request to {0} timed out")]
    Timeout(String),
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: response body unreadable or larger than {MAX_RESPONSE_BYTES} bytes")]
    Body { url: String },
    #[error("{url}: response is not the expected JSON: {reason}")]
    Json { url: String, reason: String },
}

/// Client settings.
#[derive(Debug, Clone, Default)]
pub struct HttpConfig {
    /// PEM CA bundle; the system's roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout; [`DEFAULT_TIMEOUT`] when unset.
    pub timeout: Option<Duration>,
    /// A file holding the broker's own bearer token (re-read per request, so
    /// a rotated projected token is picked up).
    pub token_file: Option<PathBuf>,
}

/// An HTTPS-only JSON client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    token_file: Option<PathBuf>,
    /// The only origin the token is sent to.
    credential_origin: url::Origin,
}

/// The origin of `url`: scheme, host and port (the default one filled in).
fn origin(url: &str) -> Result<url::Origin, HttpError> {
    url::Url::parse(url)
        .map(|u| u.origin())
        .map_err(|_| HttpError::Url(url.to_string()))
}

impl HttpClient {
    /// Builds a client that sends the configured token only to requests on
    /// `credential_url`'s origin; fails on an unreadable CA bundle.
    pub fn new(config: &HttpConfig, credential_url: &str) -> Result<Self, HttpError> {
        let credential_origin = origin(credential_url)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &config.ca_file {
            Some(path) => {
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| HttpError::Tls(e.to_string()))?
                    .with_root_certificates(load_roots(path)?)
                    .with_no_client_auth();
                builder.with_tls_config(tls)
            }
            None => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| HttpError::Tls(e.to_string()))?,
        };
        let connector = builder.https_only().enable_http1().build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: config.timeout.unwrap_or(DEFAULT_TIMEOUT),
            token_file: config.token_file.clone(),
            credential_origin,
        })
    }

    /// GETs `url` and parses the JSON answer (2xx only).
    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, HttpError> {
        self.get_json_accepting(url, ACCEPT_JSON).await
    }

    /// GETs `url` with `accept` as its `Accept` header (e.g. [`ACCEPT_JWKS`])
    /// and parses the JSON answer (2xx only).
    pub async fn get_json_accepting<T: DeserializeOwned>(
        &self,
        url: &str,
        accept: &'static str,
    ) -> Result<T, HttpError> {
        let (status, body) = self.send(Method::GET, url, accept, None).await?;
        if !status.is_success() {
            return Err(HttpError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        parse(url, &body)
    }

    /// POSTs a JSON `body` to `url` and parses the JSON answer (2xx only).
    /// The body may hold a credential: it is never logged.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<T, HttpError> {
        let (status, answer) = self
            .send(Method::POST, url, ACCEPT_JSON, Some(body))
            .await?;
        if !status.is_success() {
            return Err(HttpError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        parse(url, &answer)
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut request = request(method, url, accept, body.is_some())?;
        // Another origin (a `jwks_uri` on another host or port) gets no
        // credential: only the configured server is trusted with it.
        let same_origin = origin(url).is_ok_and(|o| o == self.credential_origin);
        if let Some(path) = self.token_file.as_ref().filter(|_| same_origin) {
            let token = read_token(path).await?;
            let mut value =
                header::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|_| HttpError::Credentials {
                        path: path.clone(),
                        source: std::io::Error::other("token is not a valid header value"),
                    })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|_| HttpError::Url(url.to_string()))?;
        let exchange = async {
            let response =
                self.client
                    .request(request)
                    .await
                    .map_err(|e| HttpError::Transport {
                        url: url.to_string(),
                        reason: error_chain(&e),
                    })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|_| HttpError::Body {
                    url: url.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout(url.to_string()))?
    }
}

/// A request to `url` without its credential: method, `Accept`, and the
/// content type of a JSON body.
fn request(
    method: Method,
    url: &str,
    accept: &'static str,
    has_body: bool,
) -> Result<hyper::http::request::Builder, HttpError> {
    if !url.starts_with("https://") {
        return Err(HttpError::Url(url.to_string()));
    }
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header(header::ACCEPT, accept);
    Ok(if has_body {
        request.header(header::CONTENT_TYPE, "application/json")
    } else {
        request
    })
}

fn parse<T: DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(body).map_err(|e| HttpError::Json {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Re-read on every request (projected tokens rotate), off the async workers.
async fn read_token(path: &Path) -> Result<SecretString, HttpError> {
    let raw = zeroize::Zeroizing::new(tokio::fs::read_to_string(path).await.map_err(|source| {
        HttpError::Credentials {
            path: path.to_owned(),
            source,
        }
    })?);
    Ok(SecretString::from(raw.trim().to_string()))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, HttpError> {
    let bad = |reason: String| HttpError::CaBundle {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_of(builder: &hyper::http::request::Builder) -> Option<&str> {
        builder
            .headers_ref()
            .and_then(|h| h.get(header::ACCEPT))
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_jwks_fetch_accepts_the_jwk_set_media_type_and_json() {
        let jwks = request(
            Method::GET,
            "https://k8s.test/openid/v1/jwks",
            ACCEPT_JWKS,
            false,
        )
        .unwrap();
        assert_eq!(
            accept_of(&jwks),
            Some("application/jwk-set+json, application/json")
        );
    }

    #[test]
    fn discovery_and_reviews_accept_json() {
        let discovery = request(
            Method::GET,
            "https://k8s.test/.well-known/openid-configuration",
            ACCEPT_JSON,
            false,
        )
        .unwrap();
        assert_eq!(accept_of(&discovery), Some("application/json"));
        let review = request(
            Method::POST,
            "https://k8s.test/apis/authentication.k8s.io/v1/tokenreviews",
            ACCEPT_JSON,
            true,
        )
        .unwrap();
        assert_eq!(accept_of(&review), Some("application/json"));
        assert_eq!(
            review
                .headers_ref()
                .and_then(|h| h.get(header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }

    #[test]
    fn only_https_urls_are_requested() {
        assert!(matches!(
            request(
                Method::GET,
                "http://k8s.test/openid/v1/jwks",
                ACCEPT_JWKS,
                false
            ),
            Err(HttpError::Url(_))
        ));
    }
}
