//! Headless Chromium driven over WebDriver: Debian's `chromium` and
//! `chromium-driver` (scripts/install-test-deps installs them), started
//! with the flags this machine needs, and a small W3C WebDriver client
//! (JSON over HTTP to chromedriver on loopback). Driver crates were weighed
//! and left out: chromiumoxide and headless_chrome compile the whole
//! DevTools protocol, fantoccini pulls the `webdriver` crate's ICU stack;
//! the dozen calls the console tests make fit in this file.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::process::{Process, eventually};

/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session; chromedriver and the browser stop on drop.
pub struct Browser {
    addr: String,
    session: String,
    _driver: Process,
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with an empty profile.
    pub fn start() -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/install-test-deps (it installs Debian's chromium and chromium-driver)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("/usr/bin/chromedriver");
        command.arg(format!("--port={port}"));
        let driver = Process::spawn(command, dir.path().join("chromedriver.log"));
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(20), "chromedriver to listen", || {
            request(&addr, "GET", "/status", None).filter(|(code, _)| *code == 200)
        });
        let profile = dir.path().join("profile");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1100,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let (code, answer) =
            request(&addr, "POST", "/session", Some(&capabilities)).expect("chromedriver answers");
        assert_eq!(code, 200, "new session: {answer}");
        let session = answer["value"]["sessionId"].as_str().unwrap().to_string();
        Self {
            addr,
            session,
            _driver: driver,
            _dir: dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let path = format!("/session/{}{path}", self.session);
        request(&self.addr, method, &path, body).expect("chromedriver answers")
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, answer) = self.call(method, path, body);
        assert_eq!(code, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(&json!({"url": url})));
    }

    /// Clicks the element `css` selects (waiting for it to exist).
    pub fn click(&self, css: &str) {
        let id = eventually(Duration::from_secs(10), css, || {
            let (code, answer) = self.call(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            );
            (code == 200).then(|| {
                answer["value"][ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("{css}: {answer}"))
                    .to_string()
            })
        });
        self.ok("POST", &format!("/element/{id}/click"), Some(&json!({})));
    }

    /// Accepts the open `confirm()` dialog; returns its text.
    pub fn accept_dialog(&self) -> String {
        let text = eventually(Duration::from_secs(10), "a dialog", || {
            let (code, answer) = self.call("GET", "/alert/text", None);
            (code == 200).then(|| answer["value"].as_str().unwrap_or_default().to_string())
        });
        self.ok("POST", "/alert/accept", Some(&json!({})));
        text
    }

    /// The text of the element `css` selects, or "" if there is none.
    pub fn text(&self, css: &str) -> String {
        let script =
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';";
        let value = self.ok(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": [css]})),
        );
        value.as_str().unwrap_or_default().to_string()
    }

    /// Waits until the element `css` selects has text containing `needle`.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        eventually(timeout, &format!("{css} to say {needle:?}"), || {
            let text = self.text(css);
            text.contains(needle).then_some(text)
        })
    }

    /// The page as the browser holds it now (after scripts ran).
    pub fn dom(&self) -> String {
        self.ok("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self.ok("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

/// One JSON request to chromedriver; `None` if it cannot be reached.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let headers = [("Content-Type", "application/json; charset=utf-8")];
    let (code, _, body) = http_exchange(addr, method, path, &headers, body.as_bytes())?;
    Some((code, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// One HTTP/1.1 exchange with `addr` (`Host` is `addr`); returns the status,
/// the head (lower-cased) and the body. `None` if it cannot be reached.
pub fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    // Read by the framing, not to EOF: chromedriver keeps connections open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    let mut rest = raw[split + 4..].to_vec();
    loop {
        let complete = match length {
            Some(length) => rest.len() >= length,
            None if chunked => rest.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
        }
    }
    let body = if chunked { dechunk(&rest) } else { rest };
    Some((code, head, body))
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let tail = &rest[end + 2..];
        match size {
            Some(size) if size > 0 && tail.len() >= size => {
                out.extend_from_slice(&tail[..size]);
                rest = tail[size..].strip_prefix(b"\r\n").unwrap_or(&tail[size..]);
            }
            _ => break,
        }
    }
    out
}
