//! The PostgreSQL proxy: takes the app's connection with no credential,
//! opens the upstream one as the current credential's user (SCRAM-SHA-256,
//! or md5 when the server asks), then relays bytes both ways unparsed.
//!
//! Framing and SCRAM come from `postgres-protocol` (the `tokio-postgres`
//! project's); only the few startup-phase messages it has no builder for
//! on the server side (AuthenticationOk, ErrorResponse) are written here.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;
use postgres_protocol::{
    authentication::{md5_hash, sasl},
    message::{backend::Message, frontend},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use zeroize::Zeroizing;

use super::{CredentialRx, ProxySpec, tls};
use crate::metrics;

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

/// Something to read and write, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

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
    #[error("upstream asked for {0}, which the proxy does not do")]
    Unsupported(&'static str),
    #[error("upstream refused the credential (SQLSTATE {0})")]
    AuthRejected(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Failure {
    /// SQLSTATE and message for the app.
    fn to_app(&self, spec: &ProxySpec) -> (&'static str, String) {
        match self {
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
            Self::Protocol(_) => ("08P01", "coffer: protocol error".to_string()),
        }
    }
}

/// One configured PostgreSQL proxy.
pub struct PostgresProxy {
    spec: Arc<ProxySpec>,
    credential: CredentialRx,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Backend key data of the open sessions, so a cancel request reaches
    /// only a backend this proxy opened.
    sessions: Mutex<HashSet<(i32, i32)>>,
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
            sessions: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        loop {
            let (app, _) = match listener.accept().await {
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

    async fn connection(&self, mut app: TcpStream) {
        let _ = app.set_nodelay(true);
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
            let _ = app.write_all(&error_response(code, &message)).await;
        }
    }

    async fn session(&self, app: &mut TcpStream) -> Result<(), Failure> {
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
        upstream.write_all(&buf).await?;
        authenticate(&mut *upstream, &user, &password).await?;
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
    async fn startup(&self, app: &mut TcpStream) -> Result<Option<Vec<(String, String)>>, Failure> {
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
            .map_err(Failure::Upstream)?;
        Ok(Box::new(tls))
    }

    /// Passes the upstream's messages to the app until ReadyForQuery;
    /// returns the session's backend key data.
    async fn forward_until_ready(
        &self,
        upstream: &mut dyn Io,
        app: &mut TcpStream,
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

    /// Sends a cancel request for a session this proxy opened; ignores any other.
    async fn cancel(&self, pid: i32, key: i32) {
        if !self.sessions.lock().contains(&(pid, key)) {
            tracing::debug!(proxy = %self.spec.name, "cancel request for an unknown session ignored");
            return;
        }
        let result = async {
            let mut upstream = self.connect().await?;
            let mut buf = BytesMut::new();
            frontend::cancel_request(pid, key, &mut buf);
            upstream.write_all(&buf).await?;
            upstream.shutdown().await?;
            Ok::<_, Failure>(())
        };
        match result.await {
            Ok(()) => tracing::debug!(proxy = %self.spec.name, "cancel request forwarded"),
            Err(error) => tracing::warn!(proxy = %self.spec.name, %error, "cancel request failed"),
        }
    }
}

/// Removes a session's key from the cancel table when the session ends.
struct SessionKey<'a> {
    table: &'a Mutex<HashSet<(i32, i32)>>,
    key: (i32, i32),
}

impl<'a> SessionKey<'a> {
    fn new(table: &'a Mutex<HashSet<(i32, i32)>>, key: (i32, i32)) -> Self {
        table.lock().insert(key);
        Self { table, key }
    }
}

impl Drop for SessionKey<'_> {
    fn drop(&mut self) {
        self.table.lock().remove(&self.key);
    }
}

/// Answers the upstream's authentication requests until AuthenticationOk.
async fn authenticate(upstream: &mut dyn Io, user: &str, password: &str) -> Result<(), Failure> {
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let (tag, frame) = read_frame(upstream).await?;
        if tag == b'E' {
            return Err(Failure::AuthRejected(sqlstate(&frame[5..])));
        }
        let mut bytes = BytesMut::from(&frame[..]);
        let message =
            Message::parse(&mut bytes)?.ok_or_else(|| Failure::Protocol("short message".into()))?;
        let mut reply = BytesMut::new();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationMd5Password(body) => {
                let hash =
                    Zeroizing::new(md5_hash(user.as_bytes(), password.as_bytes(), body.salt()));
                frontend::password_message(hash.as_bytes(), &mut reply)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut scram_offered = false;
                while let Some(mechanism) = fallible_next(&mut mechanisms)? {
                    scram_offered |= mechanism == sasl::SCRAM_SHA_256;
                }
                if !scram_offered {
                    return Err(Failure::Unsupported(
                        "a SASL mechanism other than SCRAM-SHA-256",
                    ));
                }
                // Channel binding would tie SCRAM to the TLS session; the
                // server accepts SCRAM without it unless told to require it.
                let state = sasl::ScramSha256::new(
                    password.as_bytes(),
                    sasl::ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut reply)?;
                scram = Some(state);
            }
            Message::AuthenticationSaslContinue(body) => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| Failure::Protocol("SASL continue before start".into()))?;
                state
                    .update(body.data())
                    .map_err(|_| Failure::AuthRejected("SCRAM".into()))?;
                frontend::sasl_response(state.message(), &mut reply)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let state = scram
                    .as_mut()
                    .ok_or_else(|| Failure::Protocol("SASL final before start".into()))?;
                // A server that cannot prove it knows the password is not
                // the one the credential is for.
                state
                    .finish(body.data())
                    .map_err(|_| Failure::AuthRejected("SCRAM server signature".into()))?;
            }
            Message::AuthenticationCleartextPassword => {
                return Err(Failure::Unsupported("a cleartext password"));
            }
            Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential => {
                return Err(Failure::Unsupported("GSS, SSPI or Kerberos"));
            }
            Message::NoticeResponse(_) => {}
            _ => {
                return Err(Failure::Protocol(format!(
                    "unexpected message {:?}",
                    tag as char
                )));
            }
        }
        if !reply.is_empty() {
            upstream.write_all(&reply).await?;
        }
    }
}

fn fallible_next<'a>(
    it: &mut postgres_protocol::message::backend::SaslMechanisms<'a>,
) -> std::io::Result<Option<&'a str>> {
    fallible_iterator::FallibleIterator::next(it)
}

/// Reads one backend message: its tag and its whole frame (tag and length included).
async fn read_frame(upstream: &mut dyn Io) -> Result<(u8, Vec<u8>), Failure> {
    let mut header = [0u8; 5];
    upstream.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_STARTUP_MESSAGE).contains(&len) {
        return Err(Failure::Protocol(format!("message of {len} bytes")));
    }
    let mut frame = Vec::with_capacity(len + 1);
    frame.extend_from_slice(&header);
    frame.resize(len + 1, 0);
    upstream.read_exact(&mut frame[5..]).await?;
    Ok((header[0], frame))
}

/// The `C` field of an ErrorResponse body: the SQLSTATE, never the message.
fn sqlstate(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|code| String::from_utf8_lossy(code).into_owned())
        .unwrap_or_default()
}

/// The startup packet's `name\0value\0...\0` parameters.
fn parse_params(body: &[u8]) -> Result<Vec<(String, String)>, Failure> {
    let mut fields = body.split(|b| *b == 0);
    let mut params = Vec::new();
    while let Some(name) = fields.next() {
        if name.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or_else(|| Failure::Protocol("a parameter without a value".into()))?;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Failure::Protocol("parameter not UTF-8".into()))
        };
        params.push((text(name)?, text(value)?));
    }
    Ok(params)
}

/// A FATAL ErrorResponse.
fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_parameters_are_read_in_order() {
        let params = parse_params(b"user\0app\0database\0shop\0\0").unwrap();
        assert_eq!(
            params,
            vec![
                ("user".to_string(), "app".to_string()),
                ("database".to_string(), "shop".to_string())
            ]
        );
        assert!(parse_params(b"user").is_err());
    }

    #[test]
    fn only_the_sqlstate_of_an_upstream_error_is_kept() {
        let body = b"SFATAL\0C28P01\0Mpassword authentication failed for user \"v-x\"\0\0";
        assert_eq!(sqlstate(body), "28P01");
    }

    #[test]
    fn an_error_response_is_a_framed_fatal() {
        let frame = error_response("08004", "coffer: no credential for shop/db yet");
        assert_eq!(frame[0], b'E');
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + 1, frame.len());
        let mut bytes = BytesMut::from(&frame[..]);
        assert!(matches!(
            Message::parse(&mut bytes).unwrap(),
            Some(Message::ErrorResponse(_))
        ));
    }
}
