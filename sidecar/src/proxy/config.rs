//! The `proxies:` entries of the sidecar's configuration file, and what they
//! become once checked.
//!
//! ```yaml
//! proxies:
//!   - name: shop-db
//!     protocol: postgres
//!     listen: 127.0.0.1:5432
//!     upstream: db.shop.svc:5432
//!     path: shop/pg                 # keys `username` and `password`
//!     tls: {caFile: /etc/coffer/db-ca.pem, serverName: db.shop.svc}
//!   - name: payments
//!     protocol: http
//!     listen: 127.0.0.1:8081
//!     upstream: https://api.payments.example
//!     path: shop/payments-token
//!     auth: {type: bearer, key: token}
//! ```

use std::{net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// What a proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PostgreSQL's v3 wire protocol.
    Postgres,
    /// HTTP/1.1 from the app, HTTPS upstream.
    Http,
}

/// TLS towards the upstream. The server's certificate is always verified.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    /// CA bundle (PEM) that signs the upstream's certificate; the system's
    /// roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The name the certificate must carry; the upstream's host when absent.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// How the HTTP proxy builds its header from the secret.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum HttpAuth {
    /// `Authorization: Bearer <key>`.
    Bearer {
        /// The secret's key holding the token (default `token`).
        #[serde(default = "default_token_key")]
        key: String,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// The key holding the user name (default `username`).
        #[serde(default = "default_username_key", rename = "usernameKey")]
        username_key: String,
        /// The key holding the password (default `password`).
        #[serde(default = "default_password_key", rename = "passwordKey")]
        password_key: String,
    },
    /// A named header whose value is `template`, where `{{ key }}` stands
    /// for a key of the secret.
    Header {
        /// The header's name, e.g. `X-Api-Key`.
        name: String,
        /// The value, e.g. `"{{ api_key }}"`.
        template: String,
    },
}

fn default_token_key() -> String {
    "token".into()
}
fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// One entry of `proxies:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ProxyFile {
    #[serde(default)]
    name: Option<String>,
    protocol: Protocol,
    listen: String,
    upstream: String,
    path: String,
    #[serde(default)]
    tls: Option<UpstreamTls>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default = "default_username_key")]
    username_key: String,
    #[serde(default = "default_password_key")]
    password_key: String,
    #[serde(default)]
    auth: Option<HttpAuth>,
}

/// One proxy, checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxySpec {
    /// For logs and metrics (default: the listen address).
    pub name: String,
    /// What it speaks.
    pub protocol: Protocol,
    /// A loopback address: anything that reaches it uses the credential.
    pub listen: SocketAddr,
    /// `host:port` (postgres) or `https://host[:port]` (http).
    pub upstream: String,
    /// The broker path whose value is the credential.
    pub path: String,
    /// TLS towards the upstream (postgres: none when absent; http: always).
    pub tls: Option<UpstreamTls>,
    /// Postgres: the database to ask for instead of the app's.
    pub database: Option<String>,
    /// Postgres: the secret's key holding the user name.
    pub username_key: String,
    /// Postgres: the secret's key holding the password.
    pub password_key: String,
    /// HTTP: how the header is built.
    pub auth: Option<HttpAuth>,
}

impl ProxyFile {
    /// Checks one entry.
    pub(crate) fn validate(self) -> Result<ProxySpec, ConfigError> {
        let name = self.name.unwrap_or_else(|| self.listen.clone());
        let bad = |what: String| ConfigError::Invalid(format!("proxy {name:?}: {what}"));
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| bad(format!("listen {:?} is not ip:port", self.listen)))?;
        // Whoever reaches the listener uses the credential: the pod only.
        if !listen.ip().is_loopback() {
            return Err(bad(format!(
                "listen {listen} must be a loopback address such as 127.0.0.1:5432"
            )));
        }
        if self.path.is_empty() || self.path.contains('#') {
            return Err(bad("path must be a secret path without `#key`".into()));
        }
        match self.protocol {
            Protocol::Postgres => {
                if self.auth.is_some() {
                    return Err(bad("`auth` is for http proxies".into()));
                }
                if !self.upstream.contains(':') || self.upstream.contains('/') {
                    return Err(bad(format!(
                        "upstream {:?} is not host:port",
                        self.upstream
                    )));
                }
                // The session (and md5's salted hash, open to offline
                // guessing) crosses this connection: in clear only to this
                // machine.
                if self.tls.is_none() && !is_loopback_host(&self.upstream) {
                    return Err(bad(format!(
                        "upstream {:?} is off this machine: set `tls` (a PostgreSQL session is never sent in clear over the network)",
                        self.upstream
                    )));
                }
            }
            Protocol::Http => {
                if self.auth.is_none() {
                    return Err(bad("an http proxy needs `auth`".into()));
                }
                if !self.upstream.starts_with("https://") {
                    return Err(bad(format!(
                        "upstream {:?} must be https://host[:port]",
                        self.upstream
                    )));
                }
            }
        }
        Ok(ProxySpec {
            name,
            protocol: self.protocol,
            listen,
            upstream: self.upstream.trim_end_matches('/').to_string(),
            path: self.path,
            tls: self.tls,
            database: self.database,
            username_key: self.username_key,
            password_key: self.password_key,
            auth: self.auth,
        })
    }
}

/// Whether `host:port` names this machine (127.0.0.0/8, `[::1]`,
/// `localhost`).
fn is_loopback_host(upstream: &str) -> bool {
    let host = upstream
        .rsplit_once(':')
        .map_or(upstream, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ProxySpec, ConfigError> {
        let file: ProxyFile = serde_norway::from_str(yaml).map_err(ConfigError::Parse)?;
        file.validate()
    }

    #[test]
    fn a_postgres_proxy_is_read_with_its_defaults() {
        let spec = parse(
            "protocol: postgres\nlisten: 127.0.0.1:6432\nupstream: localhost:5432\npath: shop/pg\n",
        )
        .unwrap();
        assert_eq!(spec.name, "127.0.0.1:6432");
        assert_eq!(spec.username_key, "username");
        assert!(spec.tls.is_none());
    }

    #[test]
    fn a_listener_off_loopback_is_refused() {
        let error =
            parse("protocol: postgres\nlisten: 0.0.0.0:6432\nupstream: db:5432\npath: a/b\n")
                .unwrap_err();
        assert!(error.to_string().contains("loopback"), "{error}");
    }

    #[test]
    fn a_postgres_upstream_off_this_machine_needs_tls() {
        let base = "protocol: postgres\nlisten: 127.0.0.1:1\npath: a/b\n";
        let clear = parse(&format!("{base}upstream: db.shop.svc:5432\n"));
        assert!(clear.unwrap_err().to_string().contains("set `tls`"));
        let clear_ip = parse(&format!("{base}upstream: 10.0.0.7:5432\n"));
        assert!(clear_ip.is_err());
        for local in ["127.0.0.1:5432", "'[::1]:5432'", "localhost:5432"] {
            assert!(
                parse(&format!("{base}upstream: {local}\n")).is_ok(),
                "{local}"
            );
        }
        let tls = parse(&format!(
            "{base}upstream: db.shop.svc:5432\ntls: {{serverName: db.shop.svc}}\n"
        ));
        assert!(tls.is_ok(), "{tls:?}");
    }

    #[test]
    fn an_http_proxy_needs_https_and_auth() {
        let no_auth =
            parse("protocol: http\nlisten: 127.0.0.1:1\nupstream: https://x\npath: a/b\n");
        assert!(no_auth.unwrap_err().to_string().contains("auth"));
        let plain = parse(
            "protocol: http\nlisten: 127.0.0.1:1\nupstream: http://x\npath: a/b\nauth: {type: bearer}\n",
        );
        assert!(plain.unwrap_err().to_string().contains("https"));
        let ok = parse(
            "protocol: http\nlisten: 127.0.0.1:1\nupstream: https://x/\npath: a/b\nauth: {type: header, name: X-Key, template: \"k {{ key }}\"}\n",
        )
        .unwrap();
        assert_eq!(ok.upstream, "https://x");
    }
}
