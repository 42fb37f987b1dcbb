//! The hidden `--serve` mode: the server process. The broker (with a dev
//! store, a dev signer and the bench policy) and the bare server run on a
//! server runtime of their own; the parent bench drives them with one
//! command per line on stdin (see [`serve`]).

use std::{
    io::{BufRead, Write},
    num::NonZeroUsize,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use coffer_broker::{
    auth::{
        cache::{CachingAuthenticator, DEFAULT_CACHE_ENTRIES},
        jwt::{JwtVerifier, KeySet, VerifierConfig},
        signer::DevSigner,
    },
    policy::Policy,
    service::{Broker, Limits},
    store::{SecretStore, SecretWrite, dev::DevStore},
};
use coffer_proto::{
    SecretBytes, SecretData,
    v1::{
        self, secret_broker_client::SecretBrokerClient, secret_broker_server::SecretBrokerServer,
    },
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    bare::Bare,
    fixture::{AUDIENCE, ISSUER, PATH, POLICY, RSA_JWKS, RSA_KID, SERVER_THREAD},
    grpc::{authed, connect},
    procfs::{rss_bytes, threads_cpu},
};

/// How the server process runs: the parent passes these on its command line.
pub(crate) struct ServerOptions {
    /// Worker threads of the server runtime.
    pub(crate) threads: usize,
    /// The broker's log filter (its logs go to a sink).
    pub(crate) log_level: String,
}

/// The hidden `--serve` mode: the broker and the bare server on a server
/// runtime of their own, driven by the parent bench over stdin/stdout.
///
/// Prints one line, `ready broker=URL bare=URL reply_bytes=N token=JWT`,
/// then answers each command line with one line: `write N` (the broker
/// store's rotation to version N, answered once the write and its
/// notification are done), `bare N` (the bare server's broadcast of version
/// N), `cpu` (`cpu NANOSECONDS`, the `bench-server` threads' on-CPU time),
/// `rss` (`rss BYTES`, this process's resident memory). Errors answer
/// `error WHY`. EOF on stdin (the parent is done or gone) ends the process.
pub(crate) fn serve(options: &ServerOptions) -> anyhow::Result<()> {
    // The broker logs as it would in production, into a sink.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&options.log_level))
        .with_writer(std::io::sink)
        .init();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()?;
    let setup = Setup::new()?;
    let servers = server_rt.block_on(setup.start())?;
    let token = setup.token()?;
    // The rotations' writes run on this thread (not a server thread, as the
    // writer thread was in one process), its runtime ready before the
    // parent's clock starts: the store's notification starts the fan-out.
    let writer_rt = tokio::runtime::Builder::new_current_thread().build()?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready broker={} bare={} reply_bytes={} token={token}",
        servers.broker,
        servers.bare,
        servers.reply.encoded_len()
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let answer = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("write", n) => n
                .parse()
                .map_err(anyhow::Error::from)
                .and_then(|n| writer_rt.block_on(put_value(&setup.store, n)))
                .map(|()| "ok".to_string()),
            ("bare", n) => n.parse().map_err(anyhow::Error::from).map(|n| {
                let mut update = v1::WatchSecretsResponse {
                    kind: v1::WatchEventKind::Update as i32,
                    secrets: servers.reply.secret.clone().into_iter().collect(),
                };
                for s in &mut update.secrets {
                    s.version = n;
                }
                // No receiver is not an error: nobody watches yet.
                let _ = servers.updates.send(update);
                "ok".to_string()
            }),
            ("cpu", _) => Ok(format!("cpu {}", threads_cpu(SERVER_THREAD).as_nanos())),
            ("rss", _) => Ok(format!("rss {}", rss_bytes())),
            (other, _) => Err(anyhow::anyhow!("unknown command {other:?}")),
        };
        let answer =
            answer.unwrap_or_else(|e| format!("error {}", format!("{e:#}").replace('\n', " ")));
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    // Open connections need not close in order: the parent is done.
    server_rt.shutdown_background();
    Ok(())
}

/// The server process's keys, token and store.
struct Setup {
    signer: DevSigner,
    store: Arc<DevStore>,
    jwks: Vec<u8>,
}

impl Setup {
    fn new() -> anyhow::Result<Self> {
        let signer = DevSigner::generate(ISSUER)?;
        // One key set trusting the dev signer (ES256) and the RSA fixture
        // key the cold mode signs with.
        let mut jwks: serde_json::Value = serde_json::from_str(&signer.jwks_json())?;
        let rsa: serde_json::Value = serde_json::from_slice(RSA_JWKS)?;
        if let (Some(keys), Some(more)) = (jwks["keys"].as_array_mut(), rsa["keys"].as_array()) {
            keys.extend(more.iter().filter(|k| k["kid"] == RSA_KID).cloned());
        }
        Ok(Self {
            signer,
            store: Arc::new(DevStore::in_memory()),
            jwks: serde_json::to_vec(&jwks)?,
        })
    }

    fn token(&self) -> anyhow::Result<String> {
        Ok(self.signer.mint(
            AUDIENCE,
            "bench",
            "app",
            Some("bench-0"),
            Duration::from_secs(3600),
        )?)
    }

    /// Starts the broker and the bare server on the current (server) runtime.
    async fn start(&self) -> anyhow::Result<Servers> {
        put_value(&self.store, 1).await?;
        let keys = KeySet::from_jwks_json(&self.jwks)?;
        let verifier = JwtVerifier::new(VerifierConfig::new(ISSUER, AUDIENCE), keys);
        let authn = CachingAuthenticator::new(
            Arc::new(verifier),
            NonZeroUsize::new(DEFAULT_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
        );
        let store: Arc<dyn SecretStore> = self.store.clone();
        let broker =
            Broker::new(Arc::new(authn), Policy::from_yaml(POLICY)?, store).with_limits(Limits {
                watches_per_pod: usize::MAX,
                watches_per_account: usize::MAX,
                max_watches: usize::MAX,
                ..Limits::default()
            });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_addr = listener.local_addr()?;
        tokio::spawn(coffer_broker::server::serve(
            broker,
            None,
            nodelay(listener),
            std::future::pending::<()>(),
        ));

        // The bare server answers with exactly the broker's message.
        let mut client = SecretBrokerClient::new(connect(&format!("http://{broker_addr}")).await?);
        let reply = client
            .get_secret(authed(
                v1::GetSecretRequest {
                    path: PATH.into(),
                    version: None,
                },
                &self.token()?,
            ))
            .await
            .context("the broker refused the bench's own token")?
            .into_inner();
        let (updates, _) = broadcast::channel(16);
        let bare = Bare {
            reply: Arc::new(reply.clone()),
            updates: updates.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let bare_addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SecretBrokerServer::new(bare))
                .serve_with_incoming(nodelay(listener)),
        );
        Ok(Servers {
            broker: format!("http://{broker_addr}"),
            bare: format!("http://{bare_addr}"),
            reply,
            updates,
        })
    }
}

async fn put_value(store: &DevStore, n: u64) -> anyhow::Result<()> {
    // A fixed-size value, so every version's message has the same size.
    let value = format!("{:0>160}", n);
    store
        .put(
            &coffer_broker::path::SecretName::valid(PATH),
            SecretWrite::new(
                SecretData::Bytes(SecretBytes::from(value.as_bytes())),
                "text/plain",
            ),
        )
        .await?;
    Ok(())
}

struct Servers {
    broker: String,
    bare: String,
    reply: v1::GetSecretResponse,
    updates: broadcast::Sender<v1::WatchSecretsResponse>,
}

/// The accepted connections of `listener`, with TCP_NODELAY set as the
/// broker binary sets it: tonic's `tcp_nodelay` applies only to listeners it
/// binds itself, and without it an answer can wait ~40 ms in Nagle's buffer
/// for a delayed ACK, on either server.
fn nodelay(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + 'static {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
}
