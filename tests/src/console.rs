//! A running `cofferctl console` for the end-to-end tests: started against a
//! broker with a minted operator token, its printed URL read back, and the
//! access token traded for the session cookie the way a browser does.

use std::{process::Command, time::Duration};

use crate::{
    broker::BrokerProcess,
    browser::http_exchange,
    policy::{ADMIN, policy_of, rule},
    process::{Process, binary},
    tokens::{Key, mint},
};

/// The policy the console's own tests run under: `ops/admin` manages the
/// folder `shop` (the console lists it) and what is in it.
pub fn admin_policy() -> String {
    policy_of(&[rule(
        "admin-manages-shop",
        "ops/admin",
        &["shop", "shop/*"],
        ADMIN,
    )])
}

/// A running `cofferctl console`.
pub struct Console {
    pub process: Process,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The printed URL, with the access token.
    pub url: String,
    /// The access token from the URL.
    pub token: String,
    /// The `Set-Cookie` header the token was traded for (lower-cased).
    pub set_cookie: String,
    /// The cookie as a browser sends it back: `name=value`.
    session: String,
    _dir: tempfile::TempDir,
}

impl Console {
    /// Starts a console for `who` (namespace, service account) and trades
    /// its access token for a session.
    pub fn start(broker: &BrokerProcess, who: (&str, &str)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, mint(Key::Rsa, who.0, who.1)).unwrap();
        let mut command = Command::new(binary("cofferctl"));
        command
            .arg("console")
            .arg("--broker")
            .arg(&broker.endpoint)
            .arg("--token-file")
            .arg(&token_file)
            .args(["--listen", "127.0.0.1:0"]);
        let process = Process::spawn(command, dir.path().join("console.log"));
        let until = std::time::Instant::now() + Duration::from_secs(20);
        let url = loop {
            let output = process.output();
            if let Some(url) = output
                .lines()
                .find_map(|l| l.strip_prefix("Coffer console: "))
            {
                break url.to_string();
            }
            assert!(
                std::time::Instant::now() < until,
                "no URL from the console: {output}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, query) = rest.split_once('/').unwrap();
        assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {url}");
        let token = query.strip_prefix("?token=").unwrap().to_string();
        assert_eq!(token.len(), 64, "{url}");
        let (code, head, _) =
            http_exchange(addr, "GET", &format!("/?token={token}"), &[], b"").unwrap();
        assert_eq!(code, 303, "the token is traded for a cookie: {head}");
        let set_cookie = head
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no Set-Cookie: {head}"))
            .to_string();
        let session = set_cookie.split(';').next().unwrap().trim().to_string();
        Self {
            process,
            addr: addr.to_string(),
            url,
            token,
            set_cookie,
            session,
            _dir: dir,
        }
    }

    /// The session cookie, `name=value`, as the browser sends it.
    pub fn cookie(&self) -> String {
        self.session.clone()
    }

    /// The cookie's name.
    pub fn cookie_name(&self) -> &str {
        self.session.split('=').next().unwrap()
    }

    /// GET with the session cookie; returns the status and body.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_with_cookie(path, &self.cookie())
    }

    /// GET with `cookie` (`name=value`); returns the status and body.
    pub fn get_with_cookie(&self, path: &str, cookie: &str) -> (u16, String) {
        let (code, _, body) =
            http_exchange(&self.addr, "GET", path, &[("Cookie", cookie)], b"").unwrap();
        (code, String::from_utf8(body).unwrap())
    }

    /// The CSRF token the secret page carries.
    pub fn csrf(&self, path: &str) -> String {
        let (code, html) = self.get(&format!("/secret/{path}"));
        assert_eq!(code, 200, "{html}");
        let tail = html
            .split("name=\"coffer-csrf\" content=\"")
            .nth(1)
            .unwrap();
        tail.split('"').next().unwrap().to_string()
    }

    /// A POST as the page's script sends it, with these header overrides
    /// (an empty value removes the header).
    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let origin = format!("http://{}", self.addr);
        let cookie = self.cookie();
        let mut all: Vec<(&str, &str)> = vec![
            ("Cookie", &cookie),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
        ];
        for (k, v) in headers {
            all.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
            if !v.is_empty() {
                all.push((k, v));
            }
        }
        let (code, _, body) =
            http_exchange(&self.addr, "POST", path, &all, body.as_bytes()).unwrap();
        (code, String::from_utf8(body).unwrap())
    }
}
