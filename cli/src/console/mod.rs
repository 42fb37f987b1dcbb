//! `cofferctl console`: a local web view of the secrets the operator may
//! list, their versions and the live rollout of the current version, with
//! Rotate and Rollback buttons. It talks to the broker with the operator's
//! own token, exactly as the other commands do; the broker gets no new
//! surface. There is no reveal: no page and no JSON answer carries a value.
//!
//! Safe by construction: loopback only unless `--listen` names another
//! address; a per-run random access token in the printed URL, traded for a
//! session of its own (a random value in an `HttpOnly`, `SameSite=Strict`
//! cookie, kept server-side, bounded, expiring), so the cookie never
//! carries the token; every action needs the per-run
//! CSRF token in a header and a same-origin `Origin`; the `Host` must be the
//! console's own address (no DNS rebinding); a `Content-Security-Policy`
//! without inline scripts; `Cache-Control: no-store`; bounded connections
//! and bodies.

mod views;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use coffer::Client;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use zeroize::Zeroizing;

use crate::output::{Printer, say};

/// `cofferctl console` flags.
#[derive(clap::Args)]
pub(crate) struct ConsoleArgs {
    /// Where to listen (an IP address and port). The default is a free port
    /// on 127.0.0.1; any address that is not loopback must be named here.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Open the console in the desktop's browser.
    #[arg(long)]
    open: bool,
}

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// The largest request body (actions carry a few numbers).
const MAX_BODY: usize = 4096;
/// The per-run tokens and the session values: 32 random bytes, hex.
const TOKEN_BYTES: usize = 32;
/// Sessions open at once; a new one beyond them replaces the oldest.
const MAX_SESSIONS: usize = 16;
/// How long a session lasts; then the printed URL opens a new one.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const CSRF_HEADER: &str = "x-coffer-csrf";

/// What every request handler shares.
struct Console {
    client: Client,
    /// Keys the tags below: a per-run random HMAC key, so every comparison
    /// with what a request presents is `hmac::verify`, in constant time.
    key: hmac::Key,
    /// The access token's tag; the token itself is not kept.
    access_tag: hmac::Tag,
    csrf: Zeroizing<String>,
    csrf_tag: hmac::Tag,
    /// The sessions the access token was traded for.
    sessions: Sessions,
    rng: SystemRandom,
    /// The `Host` values this console answers to.
    hosts: Vec<String>,
    cookie: String,
    views: views::Views,
}

/// The open sessions: only each value's tag and when it expires, oldest
/// first, at most [`MAX_SESSIONS`].
#[derive(Default)]
struct Sessions {
    open: Mutex<VecDeque<Session>>,
}

struct Session {
    tag: hmac::Tag,
    expires: Instant,
}

impl Sessions {
    /// Opens a session for the value whose tag is `tag`, dropping expired
    /// ones and, beyond the bound, the oldest.
    fn open(&self, tag: hmac::Tag, now: Instant) {
        let mut open = self.open.lock();
        open.retain(|s| s.expires > now);
        while open.len() >= MAX_SESSIONS {
            open.pop_front();
        }
        open.push_back(Session {
            tag,
            expires: now + SESSION_LIFETIME,
        });
    }

    /// Whether `value` is an open session's: checked against every one,
    /// each in constant time, with no early exit.
    fn check(&self, key: &hmac::Key, value: &[u8], now: Instant) -> bool {
        let open = self.open.lock();
        open.iter().fold(false, |found, s| {
            let matches = hmac::verify(key, value, s.tag.as_ref()).is_ok();
            found | (matches & (s.expires > now))
        })
    }
}

/// Runs the console until Ctrl-C or SIGTERM.
pub(crate) async fn run(
    out: Printer,
    client: Client,
    args: ConsoleArgs,
) -> anyhow::Result<ExitCode> {
    let addr = args
        .listen
        .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
    if addr.ip().is_unspecified() {
        // Every request names the address it was sent to (`Host`), and the
        // console answers only its own: a wildcard bind has none to check.
        anyhow::bail!(
            "--listen {addr}: name one address (e.g. 127.0.0.1:8750 or this machine's own IP), not a wildcard"
        );
    }
    if !addr.ip().is_loopback() {
        // Only reachable when typed: the default is loopback.
        eprintln!(
            "cofferctl: warning: the console listens on {addr}, which is not loopback: anyone \
             who can reach it and learns the URL acts with your token"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let rng = SystemRandom::new();
    let access = random_token(&rng)?;
    let csrf = random_token(&rng)?;
    let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let mut hosts = vec![bound.to_string()];
    if bound.ip().is_loopback() {
        hosts.push(format!("localhost:{}", bound.port()));
    }
    let console = Arc::new(Console {
        client,
        access_tag: hmac::sign(&key, access.as_bytes()),
        csrf_tag: hmac::sign(&key, csrf.as_bytes()),
        key,
        csrf,
        sessions: Sessions::default(),
        rng,
        hosts,
        cookie: format!("coffer_console_{}", bound.port()),
        views: views::Views::new()?,
    });
    let url = Zeroizing::new(format!("http://{bound}/?token={}", access.as_str()));
    drop(access);
    say!(out, "Coffer console: {}", url.as_str());
    say!(
        out,
        "(the token in the URL is your access for this run; Ctrl-C stops the console)"
    );
    if args.open {
        open_browser(&url);
    }
    drop(url);

    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let shutdown = coffer_runtime::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => permit?,
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("cofferctl: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let console = console.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(console.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn random_token(rng: &SystemRandom) -> anyhow::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    rng.fill(&mut bytes[..])
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    let mut text = Zeroizing::new(String::with_capacity(TOKEN_BYTES * 2));
    for b in bytes.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Ok(text)
}

/// Whether `presented` is the value whose tag is `tag`, in constant time.
fn matches(key: &hmac::Key, presented: &[u8], tag: &hmac::Tag) -> bool {
    hmac::verify(key, presented, tag.as_ref()).is_ok()
}

/// `--open`: a private redirect file, so the token is not on a command
/// line every local user can read in the process list.
fn open_browser(url: &str) {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let file = std::env::temp_dir().join(format!("coffer-console-{}.html", std::process::id()));
    let page = format!(
        "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={}\"><title>Coffer console</title>",
        url.replace('&', "&amp;").replace('"', "&quot;")
    );
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(page.as_bytes()));
    if let Err(e) = written {
        eprintln!("cofferctl: cannot write {}: {e}", file.display());
        return;
    }
    if let Err(e) = std::process::Command::new("xdg-open").arg(&file).spawn() {
        eprintln!("cofferctl: cannot open a browser (xdg-open): {e}; open the URL above");
    }
}

/// How a request failed: a status and a short, fixed text.
type Refusal = (StatusCode, &'static str);

impl Console {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut response = match self.route(req).await {
            Ok(r) => r,
            Err((status, text)) => plain(status, text),
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        response
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refusal> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.hosts.iter().any(|h| h == host) {
            return Err((StatusCode::MISDIRECTED_REQUEST, "unknown Host\n"));
        }
        let path = req.uri().path().to_string();
        // The access token in the URL is traded for a session of its own,
        // and the URL without it replaces the one in the address bar and
        // history. The cookie carries the session, never the token.
        if let Some(token) = query_param(req.uri().query(), "token") {
            if req.method() != Method::GET
                || !matches(&self.key, token.as_bytes(), &self.access_tag)
            {
                return Err((StatusCode::UNAUTHORIZED, "invalid access token\n"));
            }
            // Back to the same page, never elsewhere (`//host` is another site).
            let target = if path.starts_with("//") {
                "/"
            } else {
                path.as_str()
            };
            let mut response = plain(StatusCode::SEE_OTHER, "");
            let headers = response.headers_mut();
            headers.insert(
                header::LOCATION,
                HeaderValue::from_str(target)
                    .map_err(|_| (StatusCode::BAD_REQUEST, "bad path\n"))?,
            );
            let session = random_token(&self.rng)
                .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "cannot open a session\n"))?;
            self.sessions
                .open(hmac::sign(&self.key, session.as_bytes()), Instant::now());
            let cookie = Zeroizing::new(format!(
                "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                self.cookie,
                session.as_str(),
                SESSION_LIFETIME.as_secs()
            ));
            let mut value = HeaderValue::from_str(&cookie)
                .map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "bad session\n"))?;
            value.set_sensitive(true);
            headers.insert(header::SET_COOKIE, value);
            return Ok(response);
        }
        if !self.has_access(&req) {
            return Err((
                StatusCode::UNAUTHORIZED,
                "access token required: open the URL `cofferctl console` printed\n",
            ));
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/") => Ok(html(self.views.overview(&self.client).await)),
            (Method::GET, "/assets/console.js") => {
                Ok(asset("text/javascript; charset=utf-8", SCRIPT))
            }
            (Method::GET, "/assets/console.css") => Ok(asset("text/css; charset=utf-8", STYLE)),
            (Method::GET, "/api/secrets") => Ok(json(
                StatusCode::OK,
                &self.views.overview_json(&self.client).await,
            )),
            (Method::GET, p) if p.starts_with("/secret/") => {
                let secret = secret_path(&p["/secret/".len()..])?;
                Ok(html(
                    self.views
                        .secret(&self.client, &secret, self.csrf.as_str())
                        .await,
                ))
            }
            (Method::GET, p) if p.starts_with("/api/secret/") => {
                let secret = secret_path(&p["/api/secret/".len()..])?;
                let (status, body) = self.views.secret_json(&self.client, &secret).await;
                Ok(json(status, &body))
            }
            (Method::POST, p) if p.starts_with("/api/rotate/") => {
                let secret = secret_path(&p["/api/rotate/".len()..])?;
                self.check_action(&req)?;
                let result = self
                    .client
                    .rotate(coffer::operator::Rotate::new(&secret))
                    .await;
                Ok(action_result(result, "rotated"))
            }
            (Method::POST, p) if p.starts_with("/api/rollback/") => {
                let secret = secret_path(&p["/api/rollback/".len()..])?;
                self.check_action(&req)?;
                let to = read_rollback(req).await?;
                let result = self.client.rollback(&secret, to).await;
                Ok(action_result(result, "rolled back"))
            }
            (Method::GET | Method::POST, _) => Err((StatusCode::NOT_FOUND, "not found\n")),
            _ => Err((StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")),
        }
    }

    /// Whether the request carries an open session's cookie.
    fn has_access<B>(&self, req: &Request<B>) -> bool {
        let now = Instant::now();
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(name, _)| *name == self.cookie)
            .fold(false, |found, (_, value)| {
                found | self.sessions.check(&self.key, value.as_bytes(), now)
            })
    }

    /// Actions need the CSRF token in a header (a cross-site form cannot
    /// set one) and an `Origin` naming this console.
    fn check_action<B>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or_default();
        if !self.hosts.iter().any(|h| origin == format!("http://{h}")) {
            return Err((StatusCode::FORBIDDEN, "cross-origin request refused\n"));
        }
        let csrf = req.headers().get(CSRF_HEADER);
        if !csrf.is_some_and(|v| matches(&self.key, v.as_bytes(), &self.csrf_tag)) {
            return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token\n"));
        }
        Ok(())
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A secret path from the URL, validated as the broker would.
fn secret_path(raw: &str) -> Result<String, Refusal> {
    coffer_broker::path::SecretPath::parse(raw)
        .map(|_| raw.to_string())
        .map_err(|_| (StatusCode::BAD_REQUEST, "invalid secret path\n"))
}

async fn read_rollback(req: Request<Incoming>) -> Result<u64, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rollback {
        to_version: u64,
    }
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable\n",
            )
        })?
        .to_bytes();
    serde_json::from_slice::<Rollback>(&body)
        .map(|r| r.to_version)
        .map_err(|_| (StatusCode::BAD_REQUEST, "expected {\"toVersion\": N}\n"))
}

fn action_result(result: Result<u64, coffer::Error>, done: &str) -> Response<Full<Bytes>> {
    match result {
        Ok(version) => json(
            StatusCode::OK,
            &serde_json::json!({"version": version, "message": format!("{done}: now version {version}")}),
        ),
        Err(e) => {
            let (status, body) = views::error_parts(&e);
            json(status, &body)
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn html((status, body): (StatusCode, String)) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_hex_and_differ() {
        let rng = SystemRandom::new();
        let (a, b) = (random_token(&rng).unwrap(), random_token(&rng).unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
    }

    fn session_key() -> hmac::Key {
        hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).unwrap()
    }

    #[test]
    fn a_session_opens_only_for_its_own_value() {
        let (key, sessions, now) = (session_key(), Sessions::default(), Instant::now());
        sessions.open(hmac::sign(&key, b"first"), now);
        assert!(sessions.check(&key, b"first", now));
        assert!(!sessions.check(&key, b"firsu", now));
        assert!(!sessions.check(&key, b"", now));
        let other = session_key();
        assert!(!sessions.check(&other, b"first", now), "another run's key");
    }

    #[test]
    fn a_session_expires() {
        let (key, sessions, now) = (session_key(), Sessions::default(), Instant::now());
        sessions.open(hmac::sign(&key, b"s"), now);
        assert!(sessions.check(&key, b"s", now + SESSION_LIFETIME - Duration::from_secs(1)));
        assert!(!sessions.check(&key, b"s", now + SESSION_LIFETIME));
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let (key, sessions, now) = (session_key(), Sessions::default(), Instant::now());
        for n in 0..=MAX_SESSIONS {
            sessions.open(hmac::sign(&key, n.to_string().as_bytes()), now);
        }
        let open = sessions.open.lock().len();
        assert_eq!(open, MAX_SESSIONS);
        assert!(!sessions.check(&key, b"0", now), "the oldest was closed");
        assert!(sessions.check(&key, b"1", now));
        assert!(sessions.check(&key, MAX_SESSIONS.to_string().as_bytes(), now));
    }

    #[test]
    fn query_params_are_found_by_exact_name() {
        assert_eq!(query_param(Some("a=1&token=xy"), "token"), Some("xy"));
        assert_eq!(query_param(Some("xtoken=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[test]
    fn secret_paths_from_urls_are_validated() {
        assert!(secret_path("shop/db").is_ok());
        assert!(secret_path("../etc").is_err());
        assert!(secret_path("").is_err());
    }
}
