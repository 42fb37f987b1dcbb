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
//!     listen: /run/coffer/payments.sock   # a Unix socket, made like a secret file
//!     mode: "0600"
//!     uid: 1000
//!     upstream: https://api.payments.example
//!     path: shop/payments-token
//!     auth: {type: bearer, key: token}
//! ```

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

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
    #[serde(default, deserialize_with = "crate::config::file::mode::octal")]
    mode: Option<u32>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
}

/// Where a proxy takes the app's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A loopback address: anything in the pod that reaches it uses the
    /// credential.
    Tcp(SocketAddr),
    /// A Unix socket: only who may write to it (its mode and owner) does.
    Unix(UnixListen),
}

/// A Unix socket listener, made with its mode and owner like a secret file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnixListen {
    /// An absolute path; for postgres its name is `.s.PGSQL.<port>`.
    pub path: PathBuf,
    /// Connecting needs write permission: 0600 (the owner only) by default.
    pub mode: u32,
    /// Owner uid (default: the sidecar's own).
    pub uid: Option<u32>,
    /// Owner gid (default: the sidecar's own).
    pub gid: Option<u32>,
}

/// The default mode of a proxy's socket: its owner alone may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// `sun_path` holds 107 bytes and a NUL.
const MAX_SOCKET_PATH: usize = 107;
/// The private directory the socket is bound in first, beside it:
/// `/.coffer` and six random characters, then `/s` (see `listen.rs`).
pub(super) const BIND_DIR_PREFIX: &str = ".coffer";
const BIND_SUFFIX_LEN: usize = 1 + 7 + 6 + 2;

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(unix) => unix.path.display().fmt(f),
        }
    }
}

/// One proxy, checked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxySpec {
    /// For logs and metrics (default: the listen address).
    pub name: String,
    /// What it speaks.
    pub protocol: Protocol,
    /// A loopback address or a Unix socket.
    pub listen: Listen,
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
    /// `listen` with its mode and owner: a loopback `ip:port`, or an
    /// absolute socket path.
    fn listen(&self, bad: &impl Fn(String) -> ConfigError) -> Result<Listen, ConfigError> {
        if !self.listen.starts_with('/') {
            if self.mode.is_some() || self.uid.is_some() || self.gid.is_some() {
                return Err(bad(
                    "`mode`, `uid` and `gid` are for a Unix socket `listen`".into(),
                ));
            }
            let addr: SocketAddr = self.listen.parse().map_err(|_| {
                bad(format!(
                    "listen {:?} is neither ip:port nor an absolute socket path",
                    self.listen
                ))
            })?;
            // Whoever reaches the listener uses the credential: the pod only.
            if !addr.ip().is_loopback() {
                return Err(bad(format!(
                    "listen {addr} must be a loopback address such as 127.0.0.1:5432"
                )));
            }
            return Ok(Listen::Tcp(addr));
        }
        let path = Path::new(&self.listen);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        else {
            return Err(bad(format!(
                "listen {:?} names no socket file",
                self.listen
            )));
        };
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(bad(format!(
                "listen {:?} must not contain `..`",
                self.listen
            )));
        }
        if self.listen.len() > MAX_SOCKET_PATH
            || dir.as_os_str().len() + BIND_SUFFIX_LEN > MAX_SOCKET_PATH
        {
            return Err(bad(format!(
                "listen {:?} is too long for a Unix socket (its directory may have {} bytes)",
                self.listen,
                MAX_SOCKET_PATH - BIND_SUFFIX_LEN
            )));
        }
        // libpq and the drivers that follow it (psql, pgbench, psycopg,
        // pgx) reach a socket as `<host>/.s.PGSQL.<port>`: any other name
        // would be unreachable by `host=<dir> port=<n>`.
        let port = name.strip_prefix(".s.PGSQL.");
        if self.protocol == Protocol::Postgres
            && !port.is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
        {
            return Err(bad(format!(
                "listen {:?}: PostgreSQL clients find a socket as <directory>/.s.PGSQL.<port>; \
                 name it e.g. {}/.s.PGSQL.5432, for host={} port=5432",
                self.listen,
                dir.display(),
                dir.display()
            )));
        }
        let mode = self.mode.unwrap_or(DEFAULT_SOCKET_MODE);
        // Execute bits mean nothing on a socket; write is what lets a
        // process connect.
        if mode & 0o111 != 0 || mode & 0o200 == 0 {
            return Err(bad(format!(
                "mode \"{mode:04o}\": a socket's mode needs owner write (connect) and no \
                 execute bits, e.g. 0600 (owner), 0660 (and group)"
            )));
        }
        Ok(Listen::Unix(UnixListen {
            path: path.to_path_buf(),
            mode,
            uid: self.uid,
            gid: self.gid,
        }))
    }

    /// Checks one entry.
    pub(crate) fn validate(self) -> Result<ProxySpec, ConfigError> {
        let name = self.name.clone().unwrap_or_else(|| self.listen.clone());
        let bad = |what: String| ConfigError::Invalid(format!("proxy {name:?}: {what}"));
        let listen = self.listen(&bad)?;
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

    #[test]
    fn a_unix_socket_listen_takes_a_mode_and_an_owner() {
        let base = "protocol: postgres\nupstream: 127.0.0.1:5432\npath: a/b\n";
        let spec = parse(&format!(
            "{base}listen: /run/coffer/.s.PGSQL.5432\nmode: \"0660\"\nuid: 1000\n"
        ))
        .unwrap();
        let Listen::Unix(unix) = spec.listen else {
            panic!("{:?}", spec.listen)
        };
        assert_eq!(unix.path, Path::new("/run/coffer/.s.PGSQL.5432"));
        assert_eq!((unix.mode, unix.uid, unix.gid), (0o660, Some(1000), None));
        let default = parse(&format!("{base}listen: /run/coffer/.s.PGSQL.5432\n")).unwrap();
        assert!(matches!(
            default.listen,
            Listen::Unix(UnixListen { mode: 0o600, .. })
        ));
    }

    #[test]
    fn a_unix_socket_listen_is_refused_when_it_cannot_be_right() {
        let base = "protocol: postgres\nupstream: 127.0.0.1:5432\npath: a/b\n";
        let long = format!("/{}/.s.PGSQL.5432", "d".repeat(95));
        for (listen, extra, why) in [
            ("run/.s.PGSQL.5432", "", "neither ip:port nor an absolute"),
            ("/run/coffer/db.sock", "", "<directory>/.s.PGSQL.<port>"),
            ("/run/coffer/.s.PGSQL.0", "", "<directory>/.s.PGSQL.<port>"),
            ("/run/../.s.PGSQL.5432", "", "`..`"),
            (long.as_str(), "", "too long"),
            ("/run/.s.PGSQL.5432", "mode: \"0700\"\n", "no execute bits"),
            ("/run/.s.PGSQL.5432", "mode: \"0400\"\n", "owner write"),
            ("/run/.s.PGSQL.5432", "mode: 600\n", "quoted octal"),
            ("127.0.0.1:5432", "mode: \"0600\"\n", "for a Unix socket"),
            ("127.0.0.1:5432", "uid: 1\n", "for a Unix socket"),
        ] {
            let error = parse(&format!("{base}listen: {listen}\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{listen} {extra}: {error}");
        }
        // Any name is fine for http (curl --unix-socket takes the path).
        let http = parse(
            "protocol: http\nlisten: /run/pay.sock\nupstream: https://x\npath: a/b\nauth: {type: bearer}\n",
        );
        assert!(http.is_ok(), "{http:?}");
    }
}
