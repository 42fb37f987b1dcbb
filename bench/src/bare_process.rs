//! The bare tonic server in a process of its own, beside the shipped
//! broker: the parent starts this binary with `--serve-bare`, which serves
//! [`Bare`] (the very `GetSecretResponse` the broker served, read from a
//! file) on a runtime like the broker binary's (`Runtime::new()`: a worker
//! per core, the accept loop on the main thread), with TCP_NODELAY, and with
//! the broker's own TLS termination when given a certificate. It exits when
//! its stdin closes.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use coffer_broker::tls::{CertFiles, ReloadingCert, serve_tls};
use coffer_proto::v1::{self, secret_broker_server::SecretBrokerServer};
use futures::StreamExt;
use prost::Message;
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    bare::Bare,
    shipped::{TlsFiles, drain},
    target::{Target, process_cpu},
};

/// What the `--serve-bare` child is given on its command line.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct BareArgs {
    /// Internal: the encoded `GetSecretResponse` to answer with.
    #[arg(long, hide = true)]
    pub(crate) reply_file: Option<PathBuf>,
    /// Internal: serve TLS with this certificate (and --tls-key).
    #[arg(long, hide = true)]
    pub(crate) tls_cert: Option<PathBuf>,
    #[arg(long, hide = true)]
    pub(crate) tls_key: Option<PathBuf>,
}

/// The `--serve-bare` mode: prints `ready bare=ADDR`, serves until stdin
/// closes.
pub(crate) fn serve_bare(args: &BareArgs) -> anyhow::Result<()> {
    let reply_file = args
        .reply_file
        .as_deref()
        .context("--reply-file is required")?;
    let reply = v1::GetSecretResponse::decode(std::fs::read(reply_file)?.as_slice())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ReloadingCert::load(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            })?
            .server_config(&[b"h2"])?,
        ),
        _ => None,
    };
    // The parent's end of stdin is the process's life.
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut sink)
            .is_ok_and(|n| n > 0)
        {
            sink.clear();
        }
        std::process::exit(0);
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready bare={addr}")?;
    out.flush()?;
    drop(out);
    let (updates, _) = broadcast::channel(16);
    let bare = Bare {
        reply: Arc::new(reply),
        updates,
    };
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    let router = tonic::transport::Server::builder().add_service(SecretBrokerServer::new(bare));
    runtime.block_on(async move {
        match tls {
            Some(tls) => router.serve_with_incoming(serve_tls(incoming, tls)).await,
            None => router.serve_with_incoming(incoming).await,
        }
    })?;
    Ok(())
}

/// The `--serve-bare` child seen from the parent; killed when dropped.
pub(crate) struct BareProcess {
    url: String,
    ca_pem: Option<Vec<u8>>,
    pid: u32,
    child: Child,
    _dir: tempfile::TempDir,
}

impl BareProcess {
    /// Starts the bare server answering `reply`, with TLS when `tls` (a
    /// certificate of its own, as the broker's).
    pub(crate) fn start(reply: &v1::GetSecretResponse, tls: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let reply_file = dir.path().join("reply.bin");
        std::fs::write(&reply_file, reply.encode_to_vec())?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--serve-bare")
            .arg("--reply-file")
            .arg(&reply_file);
        let mut ca_pem = None;
        if tls {
            let files = TlsFiles::generate(dir.path())?;
            command
                .arg("--tls-cert")
                .arg(&files.cert)
                .arg("--tls-key")
                .arg(&files.key);
            ca_pem = Some(files.ca_pem);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the bare server process")?;
        let stderr = child.stderr.take().map(drain);
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        let Some(addr) = line.trim().strip_prefix("ready bare=").map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.and_then(|s| s.join().ok()).unwrap_or_default();
            anyhow::bail!("the bare server did not start ({read:?}); its stderr:\n{stderr}");
        };
        let scheme = if tls { "https" } else { "http" };
        Ok(Self {
            url: format!("{scheme}://{addr}"),
            ca_pem,
            pid: child.id(),
            child,
            _dir: dir,
        })
    }
}

impl Target for BareProcess {
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

impl Drop for BareProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
