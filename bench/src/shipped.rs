//! The shipped broker: the release `coffer-broker serve` binary, started as
//! a child process with the flags a production overlay gives it
//! (`deploy/base/deployment.yaml`: a key file, a policy file, the metrics
//! listener, JSON logs at the default level; TLS and the audit trail as
//! chosen), over the dev store, which the bench seeds and rotates through
//! `SecretOperator.PutSecret` like any operator.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use coffer_proto::{
    SecretBytes, SecretData,
    v1::{self, secret_operator_client::SecretOperatorClient},
};
use parking_lot::Mutex;

use crate::{
    fixture::{PATH, SHIPPED_POLICY},
    grpc::{authed, connect_to},
    target::{Target, process_cpu, process_rss},
    tokens::{Alg, Minter, SHIPPED_ISSUER, shipped_jwks},
};

/// How the shipped broker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags {
    pub(crate) tls: bool,
    pub(crate) audit: bool,
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to
/// `dir`: both servers of a TLS row use it.
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca_pem: Vec<u8>,
}

impl TlsFiles {
    pub(crate) fn generate(dir: &Path) -> anyhow::Result<Self> {
        let issued = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])?;
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, issued.cert.pem())?;
        std::fs::write(&key, issued.signing_key.serialize_pem())?;
        Ok(Self {
            cert,
            key,
            ca_pem: issued.cert.pem().into_bytes(),
        })
    }
}

/// The running `coffer-broker serve`; killed when dropped.
pub(crate) struct Shipped {
    url: String,
    ca_pem: Option<Vec<u8>>,
    pid: u32,
    child: Mutex<Child>,
    stderr: Mutex<Option<std::thread::JoinHandle<String>>>,
    /// The operator's token (writes the bench secret).
    operator: String,
    _dir: tempfile::TempDir,
}

impl Shipped {
    /// Starts `binary serve` with `flags` and `log_level`, waits until it
    /// listens, and writes version 1 of the bench secret.
    pub(crate) async fn start(
        binary: &Path,
        flags: Flags,
        log_level: &str,
        minter: &Minter,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("jwks.json"), shipped_jwks()?)?;
        std::fs::write(path("policy.yaml"), SHIPPED_POLICY)?;
        let addr_file = path("addr");
        let mut args: Vec<String> = [
            "serve",
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            "--log-format=json",
        ]
        .map(String::from)
        .into();
        args.push(format!("--log-level={log_level}"));
        args.push(format!("--addr-file={}", addr_file.display()));
        args.push(format!("--jwks={}", path("jwks.json").display()));
        args.push(format!("--issuer={SHIPPED_ISSUER}"));
        args.push(format!("--policy={}", path("policy.yaml").display()));
        let mut ca_pem = None;
        if flags.tls {
            let tls = TlsFiles::generate(dir.path())?;
            args.push(format!("--tls-cert={}", tls.cert.display()));
            args.push(format!("--tls-key={}", tls.key.display()));
            ca_pem = Some(tls.ca_pem);
        }
        if flags.audit {
            args.push(format!("--audit-file={}", path("audit.log").display()));
        }
        let mut child = Command::new(binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().map(drain);
        let mut shipped = Self {
            url: String::new(),
            ca_pem,
            pid: child.id(),
            child: Mutex::new(child),
            stderr: Mutex::new(stderr),
            operator: minter.mint(Alg::Es256, "operator", "bench-operator-0")?,
            _dir: dir,
        };
        let addr = shipped.wait_for_addr(&addr_file).await?;
        let scheme = if flags.tls { "https" } else { "http" };
        shipped.url = format!("{scheme}://{addr}");
        shipped.put(1).await?;
        Ok(shipped)
    }

    async fn wait_for_addr(&self, file: &Path) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(addr) = std::fs::read_to_string(file)
                && !addr.trim().is_empty()
            {
                return Ok(addr.trim().to_string());
            }
            if let Ok(Some(status)) = self.child.lock().try_wait() {
                return Err(self.failed(&format!("coffer-broker exited at start ({status})")));
            }
            if Instant::now() > deadline {
                return Err(self.failed("coffer-broker did not listen within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes version `n` of the bench secret (a fixed-size value, so every
    /// version's message has the same size).
    pub(crate) async fn put(&self, n: u64) -> anyhow::Result<()> {
        let channel = connect_to(&self.url, self.ca_pem.as_deref()).await?;
        self.put_at(&channel, PATH, n).await
    }

    /// Writes version `n` of `path` over `channel`.
    pub(crate) async fn put_at(
        &self,
        channel: &tonic::transport::Channel,
        path: &str,
        n: u64,
    ) -> anyhow::Result<()> {
        let value = format!("{n:0>160}");
        let request = v1::PutSecretRequest {
            path: path.into(),
            value: Some(SecretData::Bytes(SecretBytes::from(value.as_bytes())).into()),
            content_type: "text/plain".into(),
            cas: None,
            labels: Default::default(),
        };
        SecretOperatorClient::new(channel.clone())
            .put_secret(authed(request, &self.operator))
            .await
            .map_err(|status| self.failed(&format!("PutSecret refused: {status}")))?;
        Ok(())
    }

    /// The broker's resident memory.
    pub(crate) fn rss(&self) -> u64 {
        process_rss(self.pid)
    }

    /// Kills the child and returns `what` with the tail of its stderr.
    fn failed(&self, what: &str) -> anyhow::Error {
        {
            let mut child = self.child.lock();
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = self
            .stderr
            .lock()
            .take()
            .and_then(|s| s.join().ok())
            .unwrap_or_default();
        anyhow::anyhow!("{what}; its stderr:\n{}", stderr.trim_end())
    }
}

impl Target for Shipped {
    fn url(&self) -> &str {
        &self.url
    }

    fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref()
    }

    fn cpu(&self) -> anyhow::Result<Duration> {
        process_cpu(self.pid)
    }
}

impl Drop for Shipped {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Reads a child's stderr all along (so a chatty child never blocks on a
/// full pipe), keeping the tail for errors.
pub(crate) fn drain(mut stderr: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        let tail = text.len().saturating_sub(8192);
        String::from_utf8_lossy(&text[tail..]).into_owned()
    })
}
