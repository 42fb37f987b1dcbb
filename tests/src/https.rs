//! A local HTTPS server for tests of the broker's outbound calls (OIDC
//! discovery, JWKS, TokenReview). Each server has its own CA, generated with
//! `rcgen` (on `ring`) and written to a PEM file the broker is pointed at;
//! every request is recorded so tests can count them.
//!
//! A [`Strictness::KubeApiServer`] server also negotiates content as the
//! Kubernetes API server does: each answer has the content type the API
//! server gives its path ([`kube_content_type`]), and a request whose `Accept`
//! does not admit it is answered 406 Not Acceptable, as the real one does.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::oneshot;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The request body.
    pub body: String,
    /// The `authorization` header, if any.
    pub authorization: Option<String>,
    /// The `accept` header, if any.
    pub accept: Option<String>,
    /// The status the server answered with (406 when a strict server
    /// refused the `Accept`, without asking the handler).
    pub status: u16,
}

/// Answers a request with a status and a JSON body.
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// What a server makes of the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Ignored: every answer is served.
    Lenient,
    /// As kube-apiserver: 406 when `Accept` does not admit the content type
    /// of the path's answer ([`kube_content_type`]).
    KubeApiServer,
}

/// The JWKS path of the Kubernetes API server.
pub const KUBE_JWKS_PATH: &str = "/openid/v1/jwks";

/// The content type the Kubernetes API server serves `path` with: the JWKS
/// as `application/jwk-set+json` (and only so), everything else the tests
/// play (discovery, TokenReview) as `application/json`.
pub fn kube_content_type(path: &str) -> &'static str {
    if path == KUBE_JWKS_PATH {
        "application/jwk-set+json"
    } else {
        "application/json"
    }
}

/// Whether an `Accept` header admits `content_type`: no header admits
/// anything; otherwise one of its media ranges (`*/*`, `type/*` or the exact
/// type, case-insensitive) must match with a quality other than 0.
pub fn accept_admits(accept: Option<&str>, content_type: &str) -> bool {
    let Some(accept) = accept else { return true };
    let (want_type, want_sub) = content_type.split_once('/').unwrap_or((content_type, ""));
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        let Some((kind, sub)) = media.split_once('/') else {
            return false;
        };
        let matches = (kind == "*" && sub == "*")
            || (kind.eq_ignore_ascii_case(want_type)
                && (sub == "*" || sub.eq_ignore_ascii_case(want_sub)));
        matches && !refused
    })
}

/// An HTTPS server on 127.0.0.1 with a fresh CA; stopped on drop.
pub struct HttpsServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA bundle that verifies the server.
    pub ca_file: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Starts a server answering with `handler`, whatever the `Accept`.
    pub fn start(handler: Handler) -> Self {
        Self::start_with(handler, Strictness::Lenient)
    }

    /// Starts a stand-in for the Kubernetes API server: answers carry the
    /// API server's content types and an `Accept` that does not admit them
    /// is answered 406 (see [`Strictness::KubeApiServer`]).
    pub fn kube_api_server(handler: Handler) -> Self {
        Self::start_with(handler, Strictness::KubeApiServer)
    }

    /// Starts a server answering with `handler`, `strictness` deciding what
    /// the `Accept` header does.
    pub fn start_with(handler: Handler, strictness: Strictness) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "coffer test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = oneshot::channel();
        let recorded = seen.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let acceptor = acceptor.clone();
                    let handler = handler.clone();
                    let recorded = recorded.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let service = service_fn(move |request: Request<Incoming>| {
                            let handler = handler.clone();
                            let recorded = recorded.clone();
                            async move {
                                let method = request.method().to_string();
                                let path = request.uri().path().to_string();
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_string)
                                };
                                let authorization = header("authorization");
                                let accept = header("accept");
                                let body = request.into_body().collect().await.map_or_else(
                                    |_| String::new(),
                                    |b| String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                                );
                                let content_type = kube_content_type(&path);
                                let mut seen = Seen {
                                    method,
                                    path,
                                    body,
                                    authorization,
                                    accept,
                                    status: 0,
                                };
                                let acceptable = strictness == Strictness::Lenient
                                    || accept_admits(seen.accept.as_deref(), content_type);
                                let (status, answer) = if acceptable {
                                    handler(&seen)
                                } else {
                                    // As the API server words it.
                                    (
                                        406,
                                        format!(
                                            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"only the following media types are accepted: {content_type}\",\"reason\":\"NotAcceptable\",\"code\":406}}"
                                        ),
                                    )
                                };
                                seen.status = status;
                                recorded.lock().unwrap().push(seen);
                                let mut response = Response::new(Full::new(Bytes::from(answer)));
                                *response.status_mut() = status.try_into().unwrap();
                                // A refusal is a `Status` object, JSON.
                                let served = if acceptable {
                                    content_type
                                } else {
                                    "application/json"
                                };
                                response
                                    .headers_mut()
                                    .insert("content-type", served.parse().unwrap());
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Self {
            url: format!("https://{addr}"),
            ca_file,
            seen,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests a strict server refused with 406.
    pub fn not_acceptable(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 406)
            .collect()
    }

    /// How many requests went to `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path == path).count()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_is_the_api_servers() {
        let jwks = kube_content_type(KUBE_JWKS_PATH);
        assert_eq!(jwks, "application/jwk-set+json");
        for admits in [
            None,
            Some("*/*"),
            Some("application/*"),
            Some("application/jwk-set+json"),
            Some("application/jwk-set+json, application/json"),
            Some("application/json;q=0.9, Application/JWK-Set+JSON"),
        ] {
            assert!(accept_admits(admits, jwks), "{admits:?}");
        }
        for refuses in [
            Some("application/json"),
            Some("text/*"),
            Some("application/jwk-set+json;q=0"),
            Some(""),
        ] {
            assert!(!accept_admits(refuses, jwks), "{refuses:?}");
        }
        assert!(accept_admits(
            Some("application/json"),
            kube_content_type("/.well-known/openid-configuration")
        ));
    }
}
