//! The PostgreSQL proxy: takes the app's connection with no credential,
//! opens the upstream one as the current credential's user (SCRAM-SHA-256,
//! or md5 when the server asks), then relays bytes both ways unparsed.
//!
//! Framing and SCRAM come from `postgres-protocol` (the `tokio-postgres`
//! project's); only the few startup-phase messages it has no builder for
//! on the server side (AuthenticationOk, ErrorResponse) are written here
//! ([`wire`]). The upstream login is [`login`]; cancel requests, which
//! reach only the sessions this proxy opened, are [`cancel`].

mod cancel;
mod login;
mod wire;

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};
use zeroize::Zeroizing;

use super::{CredentialRx, Io, ProxySpec, listen::Listener, tls};
use crate::metrics;
use cancel::{CancelTable, SessionKey};
use login::authenticate;
use wire::{error_response, is_disconnect, is_sqlstate, parse_params, read_frame};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;
/// A startup packet is a few parameters: anything longer is not one.
const MAX_STARTUP: usize = 10_000;
/// Messages before ReadyForQuery (auth, parameters, notices) are small.
const MAX_STARTUP_MESSAGE: usize = 64 * 1024;
/// Connections served at once; more wait for a slot (bounds the cancel table too).
const MAX_CONNECTIONS: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection ended early. The app sees only [`Failure::to_app`];
/// no variant carries a credential or the upstream's text about it.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no credential yet")]
    NoCredential,
    #[error("the credential lacks key {0:?} or it is not UTF-8")]
    BadCredential(String),
    #[error("upstream unreachable: {0}")]
    Upstream(std::io::Error),
    #[error("upstream refused TLS")]
    NoTls,
    #[error("TLS with the upstream failed: {0}")]
    Tls(std::io::Error),
    #[error("upstream asked for {0}, which the proxy does not do")]
    Unsupported(&'static str),
    #[error("upstream refused the credential (SQLSTATE {0})")]
    AuthRejected(String),
    #[error("upstream refused the connection before the login (SQLSTATE {0})")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Failure {
    /// SQLSTATE and message for the app.
    fn to_app(&self, spec: &ProxySpec) -> (String, String) {
        let (code, message) = match self {
            Self::NoCredential => (
                "08004",
                format!("coffer: no credential for {} yet", spec.path),
            ),
            Self::BadCredential(key) => (
                "08004",
                format!(
                    "coffer: the credential at {} has no usable {key:?}",
                    spec.path
                ),
            ),
            Self::Upstream(_) | Self::Io(_) => (
                "08006",
                format!("coffer: cannot reach the upstream of proxy {}", spec.name),
            ),
            Self::NoTls => (
                "08004",
                format!("coffer: the upstream of proxy {} refused TLS", spec.name),
            ),
            Self::Tls(_) => (
                "08006",
                format!(
                    "coffer: TLS with the upstream of proxy {} failed (see the sidecar's log)",
                    spec.name
                ),
            ),
            Self::Unsupported(what) => (
                "08004",
                format!("coffer: the upstream asked for {what}, which the proxy does not do"),
            ),
            Self::AuthRejected(_) => (
                "28000",
                format!(
                    "coffer: the upstream refused the credential of {} (see the sidecar's log)",
                    spec.path
                ),
            ),
            Self::Refused(code) => {
                // Not about the credential (too many clients, starting up):
                // the app's driver may act on the code, so it is passed on,
                // the server's words are not.
                let code = if is_sqlstate(code) { code } else { "08004" };
                return (
                    code.to_string(),
                    format!(
                        "coffer: the upstream of proxy {} refused the connection (SQLSTATE {code})",
                        spec.name
                    ),
                );
            }
            Self::Protocol(_) => ("08P01", "coffer: protocol error".to_string()),
        };
        (code.to_string(), message)
    }
}

/// One configured PostgreSQL proxy.
pub struct PostgresProxy {
    spec: Arc<ProxySpec>,
    credential: CredentialRx,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Backend key data of the open sessions, so a cancel request reaches
    /// only a backend this proxy opened.
    sessions: CancelTable,
    slots: Arc<Semaphore>,
}

impl PostgresProxy {
    /// Checks the TLS settings now, so a bad CA file fails at start.
    pub fn new(spec: Arc<ProxySpec>, credential: CredentialRx) -> std::io::Result<Self> {
        let tls = match &spec.tls {
            Some(settings) => {
                tls::server_name(settings, &spec.upstream)?;
                Some(tls::client_config(settings, &[])?)
            }
            None => None,
        };
        Ok(Self {
            spec,
            credential,
            tls,
            sessions: CancelTable::default(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Accepts connections until the task is dropped.
    pub(super) async fn serve(self, listener: Listener) {
        let this = Arc::new(self);
        loop {
            let app = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(proxy = %this.spec.name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = this.slots.clone().acquire_owned().await else {
                return;
            };
            let this = this.clone();
            tokio::spawn(async move {
                this.connection(app).await;
                drop(slot);
            });
        }
    }

    async fn connection(&self, mut app: Box<dyn Io>) {
        let name = self.spec.name.as_str();
        let _open = metrics::ProxyConnection::open(name);
        if let Err(failure) = self.session(&mut app).await {
            match &failure {
                Failure::AuthRejected(_) => metrics::proxy_auth_failure(name),
                Failure::Io(e) if is_disconnect(e) => return,
                _ => {}
            }
            tracing::warn!(proxy = name, error = %failure, "connection refused");
            let (code, message) = failure.to_app(&self.spec);
            let _ = app.write_all(&error_response(&code, &message)).await;
        }
    }

    async fn session(&self, app: &mut Box<dyn Io>) -> Result<(), Failure> {
        let Some(params) = self.startup(app).await? else {
            return Ok(());
        };
        let credential = self
            .credential
            .borrow()
            .clone()
            .ok_or(Failure::NoCredential)?;
        let key_text = |key: &str| {
            credential
                .expose_key(key)
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(|s| Zeroizing::new(s.to_string()))
                .ok_or_else(|| Failure::BadCredential(key.to_string()))
        };
        let user = key_text(&self.spec.username_key)?;
        let password = key_text(&self.spec.password_key)?;
        drop(credential);

        let mut upstream = self.connect().await?;
        let database = self
            .spec
            .database
            .clone()
            .or_else(|| {
                params
                    .iter()
                    .find(|(k, _)| k == "database")
                    .map(|p| p.1.clone())
            })
            .or_else(|| {
                params
                    .iter()
                    .find(|(k, _)| k == "user")
                    .map(|p| p.1.clone())
            })
            .unwrap_or_else(|| "postgres".into());
        let mut buf = BytesMut::new();
        let passed = params
            .iter()
            .filter(|(k, _)| k != "user" && k != "database")
            .map(|(k, v)| (k.as_str(), v.as_str()));
        let startup = [("user", user.as_str()), ("database", database.as_str())];
        frontend::startup_message(startup.into_iter().chain(passed), &mut buf)?;
        // The upstream hanging up here is its failure, told to the app, not
        // the app's own disconnect (which ends the connection silently).
        let login = async {
            upstream.write_all(&buf).await?;
            authenticate(&mut *upstream, &user, &password).await
        };
        login.await.map_err(|failure| match failure {
            Failure::Io(e) => Failure::Upstream(e),
            other => other,
        })?;
        drop(password);
        tracing::debug!(proxy = %self.spec.name, "upstream authenticated");

        // The app asked for no password and gets none: it is "trusted".
        app.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).await?;
        let key = self.forward_until_ready(&mut *upstream, app).await?;
        let _session = key.map(|key| SessionKey::new(&self.sessions, key));
        let (to_upstream, to_app) = tokio::io::copy_bidirectional(app, &mut upstream)
            .await
            .or_else(|e| {
                if is_disconnect(&e) {
                    Ok((0, 0))
                } else {
                    Err(e)
                }
            })?;
        metrics::proxy_bytes(&self.spec.name, to_upstream, to_app);
        Ok(())
    }

    /// Reads the app's startup packet: answers SSL and GSS requests `N`,
    /// forwards a cancel request (then `None`), returns the parameters.
    async fn startup(
        &self,
        app: &mut Box<dyn Io>,
    ) -> Result<Option<Vec<(String, String)>>, Failure> {
        loop {
            let len = app.read_u32().await? as usize;
            if !(8..=MAX_STARTUP).contains(&len) {
                return Err(Failure::Protocol(format!("startup packet of {len} bytes")));
            }
            let mut body = vec![0; len - 4];
            app.read_exact(&mut body).await?;
            let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            match code {
                // Loopback needs no TLS; the upstream leg has its own.
                SSL_REQUEST | GSSENC_REQUEST => app.write_all(b"N").await?,
                CANCEL_REQUEST if body.len() == 12 => {
                    let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                    let key = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                    self.cancel(pid, key).await;
                    return Ok(None);
                }
                PROTOCOL_3_0 => return parse_params(&body[4..]).map(Some),
                other => {
                    return Err(Failure::Protocol(format!("protocol version {other:#x}")));
                }
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Failure> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.spec.upstream))
            .await
            .map_err(|_| Failure::Upstream(std::io::ErrorKind::TimedOut.into()))?
            .map_err(Failure::Upstream)?;
        let _ = tcp.set_nodelay(true);
        let (Some(config), Some(settings)) = (&self.tls, &self.spec.tls) else {
            return Ok(Box::new(tcp));
        };
        let mut tcp = tcp;
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        if tcp.read_u8().await? != b'S' {
            return Err(Failure::NoTls);
        }
        let name = tls::server_name(settings, &self.spec.upstream)?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(Failure::Tls)?;
        Ok(Box::new(tls))
    }

    /// Passes the upstream's messages to the app until ReadyForQuery;
    /// returns the session's backend key data.
    async fn forward_until_ready(
        &self,
        upstream: &mut dyn Io,
        app: &mut dyn Io,
    ) -> Result<Option<(i32, i32)>, Failure> {
        let mut key = None;
        let mut out = BytesMut::new();
        loop {
            let (tag, frame) = read_frame(upstream).await?;
            out.extend_from_slice(&frame);
            match tag {
                b'K' if frame.len() == 13 => {
                    let pid = i32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
                    let secret = i32::from_be_bytes([frame[9], frame[10], frame[11], frame[12]]);
                    key = Some((pid, secret));
                }
                b'Z' | b'E' => break,
                _ => {}
            }
        }
        app.write_all(&out).await?;
        Ok(key)
    }
}
