//! The HTTP proxy: a plain-HTTP/1.1 listener on loopback or a Unix socket; each request goes
//! to the configured HTTPS upstream with a header built from the current
//! credential, hop-by-hop headers removed, bodies streamed both ways.
//!
//! The header template (`{{ key }}`) is filled here rather than with
//! minijinja so the value only ever sits in zeroizing buffers.

use std::{convert::Infallible, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use super::{Credential, CredentialRx, ProxySpec, config::HttpAuth, listen::Listener, tls};
use crate::metrics;

type ProxyBody = BoxBody<Bytes, hyper::Error>;
type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>;

/// Requests served at once.
const MAX_CONNECTIONS: usize = 1024;

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One configured HTTP proxy.
pub struct HttpProxy {
    spec: Arc<ProxySpec>,
    credential: CredentialRx,
    client: HttpsClient,
    upstream: Uri,
}

impl HttpProxy {
    /// Builds the upstream client; a bad CA file fails here, at start.
    pub fn new(spec: Arc<ProxySpec>, credential: CredentialRx) -> std::io::Result<Self> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let settings = spec.tls.clone().unwrap_or_default();
        // hyper-rustls sets ALPN itself (and panics if it is set).
        let config = tls::client_config(&settings, &[])?;
        let upstream: Uri = spec
            .upstream
            .parse()
            .map_err(|e| invalid(format!("upstream: {e}")))?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*config).clone())
            .https_only();
        let builder = match &settings.server_name {
            Some(_) => builder.with_server_name_resolver(
                hyper_rustls::FixedServerNameResolver::new(tls::server_name(&settings, "")?),
            ),
            None => builder,
        };
        let connector = builder.enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            spec,
            credential,
            client,
            upstream,
        })
    }

    /// Accepts connections until the task is dropped.
    pub(super) async fn serve(self, listener: Listener) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(proxy = %this.spec.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let this = this.clone();
            tokio::spawn(async move {
                let _open = metrics::ProxyConnection::open(&this.spec.name);
                let service = service_fn(|request| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.forward(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(slot);
            });
        }
    }

    async fn forward(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let Some(credential) = self.credential.borrow().clone() else {
            return self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("coffer: no credential for {} yet\n", self.spec.path),
            );
        };
        let Some(auth) = &self.spec.auth else {
            return self.refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "coffer: no auth\n".into(),
            );
        };
        let Some((name, value)) = header_for(auth, &credential) else {
            return self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "coffer: the credential at {} lacks a key the header needs\n",
                    self.spec.path
                ),
            );
        };
        drop(credential);
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut uri = self.upstream.clone().into_parts();
        uri.path_and_query = path.parse().ok();
        let Ok(uri) = Uri::from_parts(uri) else {
            return self.refuse(StatusCode::BAD_REQUEST, "coffer: bad request path\n".into());
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        parts.headers.insert(name, value);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                if response.status() == StatusCode::UNAUTHORIZED {
                    metrics::proxy_auth_failure(&self.spec.name);
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(error) => {
                tracing::warn!(proxy = %self.spec.name, %error, "upstream request failed");
                self.refuse(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "coffer: cannot reach the upstream of proxy {}\n",
                        self.spec.name
                    ),
                )
            }
        }
    }

    fn refuse(&self, status: StatusCode, text: String) -> Response<ProxyBody> {
        let body = Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
    }
}

/// Removes the hop-by-hop headers, and those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// The header `auth` asks for, from `credential`; `None` if a key is missing.
fn header_for(auth: &HttpAuth, credential: &Credential) -> Option<(HeaderName, HeaderValue)> {
    let text = |key: &str| {
        credential
            .expose_key(key)
            .and_then(|b| std::str::from_utf8(b).ok())
    };
    let (name, value) = match auth {
        HttpAuth::Bearer { key } => {
            let mut value = Zeroizing::new(String::from("Bearer "));
            value.push_str(text(key)?);
            (header::AUTHORIZATION, value)
        }
        HttpAuth::Basic {
            username_key,
            password_key,
        } => {
            let mut pair = Zeroizing::new(String::new());
            pair.push_str(text(username_key)?);
            pair.push(':');
            pair.push_str(text(password_key)?);
            let mut value = Zeroizing::new(String::from("Basic "));
            base64::engine::general_purpose::STANDARD.encode_string(pair.as_bytes(), &mut value);
            (header::AUTHORIZATION, value)
        }
        HttpAuth::Header { name, template } => {
            let name = HeaderName::try_from(name.as_str()).ok()?;
            (name, fill(template, text)?)
        }
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

/// `template` with each `{{ key }}` replaced by the key's value.
fn fill<'a>(template: &str, text: impl Fn(&str) -> Option<&'a str>) -> Option<Zeroizing<String>> {
    let mut out = Zeroizing::new(String::with_capacity(template.len() + 64));
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}")? + start;
        out.push_str(text(rest[start + 2..end].trim())?);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use coffer::{SecretBytes, SecretData};

    use super::*;

    fn credential(pairs: &[(&str, &str)]) -> Credential {
        let map: BTreeMap<String, SecretBytes> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), SecretBytes::from(v.as_bytes().to_vec())))
            .collect();
        Credential::new(1, SecretData::Map(map))
    }

    #[test]
    fn a_template_takes_keys_of_the_secret() {
        let cred = credential(&[("api_key", "k1"), ("tenant", "t")]);
        let auth = HttpAuth::Header {
            name: "X-Api-Key".into(),
            template: "{{ tenant }}:{{api_key}}".into(),
        };
        let (name, value) = header_for(&auth, &cred).unwrap();
        assert_eq!(name.as_str(), "x-api-key");
        assert_eq!(value.to_str().unwrap(), "t:k1");
        assert!(value.is_sensitive());
        let missing = HttpAuth::Header {
            name: "X".into(),
            template: "{{ nope }}".into(),
        };
        assert!(header_for(&missing, &cred).is_none());
    }

    #[test]
    fn basic_auth_is_base64_of_user_and_password() {
        let cred = credential(&[("username", "u"), ("password", "p")]);
        let auth = HttpAuth::Basic {
            username_key: "username".into(),
            password_key: "password".into(),
        };
        let (_, value) = header_for(&auth, &cred).unwrap();
        assert_eq!(value.to_str().unwrap(), "Basic dTpw");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("5"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
    }
}
