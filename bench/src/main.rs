//! `coffer-bench`: the broker against a bare tonic server, in the same run.
//!
//! Both servers run in this process on one dedicated server runtime (threads
//! named `bench-server`); the load runs on another (`bench-client`). Server
//! CPU time is the sum of the `bench-server` threads' on-CPU time read from
//! `/proc/self/task/*/schedstat` around each measurement, so client work is
//! never charged to the server. The bare server implements the same
//! `SecretBroker::GetSecret` (and `WatchSecrets` as a plain broadcast) with
//! the very message the broker serves, and no authentication.
//!
//! Modes: cached `GetSecret` at C connections x N in flight per connection;
//! cold tokens (a fresh valid RS256 token per request, beside ring's raw
//! RS256 verify rate); N watchers over M connections and one rotation.
//! `--quick` runs every mode tiny (seconds): CI checks that the table prints.

use std::{
    num::NonZeroUsize,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Parser;
use coffer_broker::{
    auth::{
        cache::{CachingAuthenticator, DEFAULT_CACHE_ENTRIES},
        jwt::{JwtVerifier, KeySet, ProjectedClaims, VerifierConfig},
        signer::DevSigner,
    },
    policy::Policy,
    service::{Broker, Limits},
    store::{SecretStore, SecretWrite, dev::DevStore},
};
use coffer_proto::{
    SecretBytes, SecretData,
    v1::{
        self,
        secret_broker_client::SecretBrokerClient,
        secret_broker_server::{SecretBroker, SecretBrokerServer},
    },
    wire::WatchReply,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Response, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};

const ISSUER: &str = "https://coffer-bench.local";
const AUDIENCE: &str = "coffer";
const PATH: &str = "bench/secret";
const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/rsa-a.pem");
const RSA_JWKS: &[u8] = include_bytes!("../../tests/fixtures/jwks-a.json");
const RSA_KID: &str = "rsa-a";
const POLICY: &str = r#"
rules:
  - name: bench-app-reads
    subjects: [{namespace: bench, serviceAccount: app}]
    paths: ["bench/*"]
    capabilities: [read, watch]
"#;
const SERVER_THREAD: &str = "bench-server";

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Every mode tiny (a few seconds in all): checks that the bench runs.
    #[arg(long)]
    quick: bool,
    /// How long each Get measurement runs.
    #[arg(long, default_value = "3s", value_parser = humantime_parse)]
    duration: Duration,
    /// Get loads as CONNECTIONSxIN_FLIGHT (in flight per connection);
    /// `none` runs no Get load.
    #[arg(long, value_delimiter = ',', default_value = "1x16,4x64")]
    get: Vec<String>,
    /// Fresh RS256 tokens for the cold mode (each used once); 0 skips it.
    #[arg(long, default_value_t = 10000)]
    cold_tokens: usize,
    /// Watch runs as WATCHERSxCONNECTIONS; `none` runs no watch.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000x1000,10000x100,10000x10000"
    )]
    watch: Vec<String>,
    /// Rotations per watch run (the figures are the median over them).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The broker's log filter (its default is `info`); logs go to a sink.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Internal: open the first `--watch` run's streams on one server only
    /// (`broker` or `bare`) and print its RSS growth per stream; the bench
    /// runs itself so for each side, each in a process of its own.
    #[arg(long, hide = true)]
    memory_probe: Option<String>,
    /// Worker threads of the server runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
}

fn humantime_parse(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("bad duration {s:?} (use ms or s)")),
    }
}

fn pair(s: &str) -> anyhow::Result<(usize, usize)> {
    let (a, b) = s
        .split_once('x')
        .with_context(|| format!("{s:?} is not AxB"))?;
    Ok((a.parse()?, b.parse()?))
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.duration = Duration::from_millis(300);
        args.get = vec!["1x4".into()];
        args.cold_tokens = 40;
        args.watch = vec!["50x5".into()];
        args.rounds = 2;
    }
    // The broker logs as it would in production, into a sink.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_level))
        .with_writer(std::io::sink)
        .init();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;

    let setup = Setup::new()?;
    let servers = server_rt.block_on(setup.start())?;
    if let Some(side) = &args.memory_probe {
        let spec = args.watch.first().context("--memory-probe needs --watch")?;
        let (watchers, conns) = pair(spec)?;
        let url = match side.as_str() {
            "broker" => &servers.broker,
            "bare" => &servers.bare,
            other => anyhow::bail!("--memory-probe {other:?}: broker or bare"),
        };
        let figures =
            client_rt.block_on(watch_run(url, &setup.token()?, watchers, conns, 0, |_| {
                Ok(())
            }))?;
        println!("rss_per_stream={}", figures.rss_per_stream);
        return Ok(());
    }
    let mut rows = Vec::new();
    client_rt.block_on(run_all(&args, &setup, &servers, &mut rows))?;
    print_table(&rows, servers.reply.encoded_len());
    Ok(())
}

/// Keys, tokens and the store shared by every mode.
struct Setup {
    signer: DevSigner,
    store: Arc<DevStore>,
    rsa: jsonwebtoken::EncodingKey,
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
            rsa: jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PEM)?,
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
                watches_per_identity: usize::MAX,
                ..Limits::default()
            });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_addr = listener.local_addr()?;
        tokio::spawn(coffer_broker::server::serve(
            broker,
            None,
            TcpListenerStream::new(listener),
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
                .tcp_nodelay(true)
                .add_service(SecretBrokerServer::new(bare))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Ok(Servers {
            broker: format!("http://{broker_addr}"),
            bare: format!("http://{bare_addr}"),
            reply,
            updates,
        })
    }
}

/// A thread with its own runtime that writes the bench's path on demand.
struct Writer {
    requests: std::sync::mpsc::Sender<(u64, std::sync::mpsc::Sender<anyhow::Result<()>>)>,
}

impl Writer {
    fn start(store: Arc<DevStore>) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let (requests, incoming) =
            std::sync::mpsc::channel::<(u64, std::sync::mpsc::Sender<anyhow::Result<()>>)>();
        std::thread::spawn(move || {
            for (n, done) in incoming {
                let _ = done.send(rt.block_on(put_value(&store, n)));
            }
        });
        Ok(Self { requests })
    }

    /// Writes value `n` and returns when the write (and its notification)
    /// is done.
    fn write(&self, n: u64) -> anyhow::Result<()> {
        let (done, wait) = std::sync::mpsc::channel();
        self.requests
            .send((n, done))
            .map_err(|_| anyhow::anyhow!("the writer thread is gone"))?;
        wait.recv()
            .map_err(|_| anyhow::anyhow!("the writer thread is gone"))?
    }
}

async fn put_value(store: &DevStore, n: u64) -> anyhow::Result<()> {
    // A fixed-size value, so every version's message has the same size.
    let value = format!("{:0>160}", n);
    store
        .put(
            PATH,
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

/// A bare tonic server: no authentication, no policy, no store.
struct Bare {
    reply: Arc<v1::GetSecretResponse>,
    updates: broadcast::Sender<v1::WatchSecretsResponse>,
}

type BareStream = Pin<Box<dyn Stream<Item = Result<WatchReply, Status>> + Send>>;

#[tonic::async_trait]
impl SecretBroker for Bare {
    type WatchSecretsStream = BareStream;

    async fn get_secret(
        &self,
        _: Request<v1::GetSecretRequest>,
    ) -> Result<Response<v1::GetSecretResponse>, Status> {
        Ok(Response::new((*self.reply).clone()))
    }

    async fn get_secrets(
        &self,
        _: Request<v1::GetSecretsRequest>,
    ) -> Result<Response<v1::GetSecretsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }

    async fn watch_secrets(
        &self,
        _: Request<v1::WatchSecretsRequest>,
    ) -> Result<Response<Self::WatchSecretsStream>, Status> {
        let snapshot = v1::WatchSecretsResponse {
            kind: v1::WatchEventKind::Snapshot as i32,
            secrets: self.reply.secret.clone().into_iter().collect(),
        };
        let updates = tokio_stream::wrappers::BroadcastStream::new(self.updates.subscribe());
        // Each stream encodes its own message, as a plain tonic server does.
        let stream = futures::stream::once(async move { Ok(snapshot.into()) })
            .chain(updates.filter_map(|u| async move { u.ok().map(|u| Ok(u.into())) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack_secrets(
        &self,
        _: Request<v1::AckSecretsRequest>,
    ) -> Result<Response<v1::AckSecretsResponse>, Status> {
        Err(Status::unimplemented("bare"))
    }
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {token}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// One figure of one server.
#[derive(Default, Clone)]
struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    cpu_per_req: Duration,
}

enum Row {
    Get {
        label: String,
        coffer: Figures,
        bare: Figures,
    },
    Cold {
        coffer: Figures,
        bare: Figures,
        /// ring on one thread: verifications per wall second and per CPU
        /// second.
        ring: (f64, f64),
        /// ring on `threads` threads at once, likewise (all threads).
        ring_busy: (f64, f64),
        threads: usize,
    },
    Watch {
        label: String,
        coffer: WatchFigures,
        bare: WatchFigures,
    },
    Skipped(String),
}

#[derive(Default, Clone)]
struct WatchFigures {
    first: Duration,
    median: Duration,
    p99: Duration,
    last: Duration,
    /// Server CPU time of the fan-out per update delivered.
    cpu_per_update: Duration,
    rss_per_stream: f64,
}

async fn run_all(
    args: &Args,
    setup: &Setup,
    servers: &Servers,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let token = setup.token()?;
    for spec in args.get.iter().filter(|s| *s != "none") {
        let (conns, in_flight) = pair(spec)?;
        // Warm both (connections, caches), then measure bare, coffer, bare,
        // coffer and keep the better of each, so drift hits both alike.
        let warm = args.duration / 4;
        get_load(&servers.bare, &token, conns, in_flight, warm).await?;
        get_load(&servers.broker, &token, conns, in_flight, warm).await?;
        let mut bare = get_load(&servers.bare, &token, conns, in_flight, args.duration).await?;
        let mut coffer = get_load(&servers.broker, &token, conns, in_flight, args.duration).await?;
        let bare2 = get_load(&servers.bare, &token, conns, in_flight, args.duration).await?;
        let coffer2 = get_load(&servers.broker, &token, conns, in_flight, args.duration).await?;
        if bare2.rate > bare.rate {
            bare = bare2;
        }
        if coffer2.rate > coffer.rate {
            coffer = coffer2;
        }
        rows.push(Row::Get {
            label: format!("{conns} x {in_flight}"),
            coffer,
            bare,
        });
    }

    // Cold: every request carries a token the broker has never seen.
    if args.cold_tokens > 0 {
        let tokens = mint_cold(setup, args.cold_tokens)?;
        let run_for = args.duration.min(Duration::from_secs(2));
        let ring = ring_rs256_rate(&tokens[0], run_for, 1)?;
        // As the server runs under the cold load: every server thread busy
        // at once (on this machine's two vCPUs, which may share a core).
        let ring_busy = ring_rs256_rate(&tokens[0], run_for, args.server_threads)?;
        let bare = cold_load(&servers.bare, &tokens).await?;
        let coffer = cold_load(&servers.broker, &tokens).await?;
        rows.push(Row::Cold {
            coffer,
            bare,
            ring,
            ring_busy,
            threads: args.server_threads,
        });
    }

    let limit = fd_limit();
    for spec in args.watch.iter().filter(|s| *s != "none") {
        let (watchers, conns) = pair(spec)?;
        // Each connection costs two descriptors here (client and server end).
        if conns * 2 + 256 > limit {
            rows.push(Row::Skipped(format!(
                "watch {watchers} over {conns} connections: needs {} descriptors, the limit is {limit}",
                conns * 2 + 256
            )));
            continue;
        }
        // The broker first: its streams grow the heap afresh, while the bare
        // server's may reuse what the broker's freed, so the RSS ratio is
        // pessimistic for the broker.
        // The write happens on a thread of its own, ready before the clock
        // starts: the store's notification is what starts the fan-out.
        let writer = Writer::start(setup.store.clone())?;
        let coffer = watch_run(&servers.broker, &token, watchers, conns, args.rounds, |n| {
            writer.write(n)
        })
        .await?;
        let bare = watch_run(&servers.bare, &token, watchers, conns, args.rounds, |n| {
            let mut update = v1::WatchSecretsResponse {
                kind: v1::WatchEventKind::Update as i32,
                secrets: servers.reply.secret.clone().into_iter().collect(),
            };
            for s in &mut update.secrets {
                s.version = n;
            }
            let _ = servers.updates.send(update);
            Ok(())
        })
        .await?;
        // Memory in a process of its own per side: in one process the
        // second side reuses the heap the first one grew.
        let (mut coffer, mut bare) = (coffer, bare);
        coffer.rss_per_stream = memory_probe("broker", spec, &args.log_level)?;
        bare.rss_per_stream = memory_probe("bare", spec, &args.log_level)?;
        rows.push(Row::Watch {
            label: format!("{watchers} over {conns}"),
            coffer,
            bare,
        });
    }
    Ok(())
}

/// The Get load: `conns` connections, `in_flight` requests on each.
async fn get_load(
    url: &str,
    token: &str,
    conns: usize,
    in_flight: usize,
    run_for: Duration,
) -> anyhow::Result<Figures> {
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(connect(url).await?);
    }
    let cpu_before = server_cpu();
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for channel in &channels {
        for _ in 0..in_flight {
            let mut client = SecretBrokerClient::new(channel.clone());
            let token = token.to_string();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    latencies.push(timed_get(&mut client, &token).await?);
                }
                Ok::<_, Status>(latencies)
            }));
        }
    }
    gather(tasks, start, cpu_before).await
}

/// One `GetSecret` of the bench's path with `token`, and how long it took.
async fn timed_get(
    client: &mut SecretBrokerClient<Channel>,
    token: &str,
) -> Result<Duration, Status> {
    let sent = Instant::now();
    let request = authed(
        v1::GetSecretRequest {
            path: PATH.into(),
            version: None,
        },
        token,
    );
    client.get_secret(request).await?;
    Ok(sent.elapsed())
}

/// Every load task's latencies, and the figures of the run begun at `start`.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, Status>>>,
    start: Instant,
    cpu_before: Duration,
) -> anyhow::Result<Figures> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let cpu = server_cpu().saturating_sub(cpu_before);
    Ok(figures(latencies, elapsed, cpu))
}

fn figures(mut latencies: Vec<Duration>, elapsed: Duration, cpu: Duration) -> Figures {
    latencies.sort_unstable();
    let n = latencies.len().max(1);
    Figures {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        p999: quantile(&latencies, 0.999),
        cpu_per_req: cpu / u32::try_from(n).unwrap_or(u32::MAX),
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// RS256 tokens, each for another pod so no two are alike.
fn mint_cold(setup: &Setup, count: usize) -> anyhow::Result<Arc<Vec<String>>> {
    let count = count.max(1);
    let threads = 2;
    let per = count.div_ceil(threads);
    let minted: Vec<anyhow::Result<Vec<String>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * per..((t + 1) * per).min(count))
                        .map(|i| {
                            let pod = format!("cold-{i}");
                            Ok(ProjectedClaims::projected(
                                ISSUER,
                                AUDIENCE,
                                "bench",
                                "app",
                                Some(&pod),
                                Duration::from_secs(3600),
                            )
                            .sign(
                                jsonwebtoken::Algorithm::RS256,
                                RSA_KID,
                                &setup.rsa,
                            )?)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("minting panicked")))
            })
            .collect()
    });
    let mut tokens = Vec::with_capacity(count);
    for part in minted {
        tokens.extend(part?);
    }
    Ok(Arc::new(tokens))
}

/// ring's own RS256 verification rate on pre-decoded bytes: per second of
/// wall time, and per second of this thread's CPU time (steady under load).
fn ring_rs256_rate(token: &str, run_for: Duration, threads: usize) -> anyhow::Result<(f64, f64)> {
    let jwks: serde_json::Value = serde_json::from_slice(RSA_JWKS)?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == RSA_KID))
        .context("the RSA fixture key is missing")?;
    let b64 = |s: &serde_json::Value| URL_SAFE_NO_PAD.decode(s.as_str().unwrap_or_default());
    let key = ring::signature::RsaPublicKeyComponents {
        n: b64(&jwk["n"])?,
        e: b64(&jwk["e"])?,
    };
    let (message, sig) = token.rsplit_once('.').context("not a JWT")?;
    let sig = URL_SAFE_NO_PAD.decode(sig)?;
    let start = Instant::now();
    let runs = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<(u64, Duration)> {
                    let cpu_before = thread_cpu();
                    let mut n = 0u64;
                    while start.elapsed() < run_for {
                        for _ in 0..16 {
                            key.verify(
                                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                                message.as_bytes(),
                                &sig,
                            )
                            .map_err(|_| anyhow::anyhow!("raw RSA verify failed"))?;
                        }
                        n += 16;
                    }
                    Ok((n, thread_cpu().saturating_sub(cpu_before)))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a ring thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let n: u64 = runs.iter().map(|(n, _)| n).sum();
    let cpu: f64 = runs.iter().map(|(_, c)| c.as_secs_f64()).sum();
    let wall = n as f64 / start.elapsed().as_secs_f64();
    Ok((wall, if cpu > 0.0 { n as f64 / cpu } else { 0.0 }))
}

fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// One connection, 16 in flight, each request with the next unused token.
async fn cold_load(url: &str, tokens: &Arc<Vec<String>>) -> anyhow::Result<Figures> {
    let channel = connect(url).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = server_cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = SecretBrokerClient::new(channel.clone());
        let (tokens, next) = (Arc::clone(tokens), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(token) = tokens.get(next.fetch_add(1, Ordering::Relaxed)) {
                latencies.push(timed_get(&mut client, token).await?);
            }
            Ok::<_, Status>(latencies)
        }));
    }
    gather(tasks, start, cpu_before).await
}

/// Opens `watchers` streams over `conns` connections, waits for every
/// snapshot, then rotates `rounds` times, each once every receiver has the
/// last, timing each receiver from its rotation. The figures are the median
/// over the rounds; the server CPU is the whole fan-out's, per update sent.
async fn watch_run(
    url: &str,
    token: &str,
    watchers: usize,
    conns: usize,
    rounds: usize,
    mut rotate: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<WatchFigures> {
    let conns = conns.clamp(1, watchers.max(1));
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(connect(url).await?);
    }
    let rss_before = rss_bytes();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
    let (receipts_tx, mut receipts) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut client = SecretBrokerClient::new(channels[i % conns].clone());
        let request = authed(
            v1::WatchSecretsRequest {
                paths: vec![PATH.into()],
            },
            token,
        );
        let ready = ready_tx.clone();
        let receipts = receipts_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.watch_secrets(request).await?.into_inner();
            stream
                .message()
                .await?
                .ok_or_else(|| Status::internal("no snapshot"))?;
            let _ = ready.send(()).await;
            for _ in 0..rounds {
                let update = stream
                    .message()
                    .await?
                    .ok_or_else(|| Status::internal("no update"))?;
                let _ = receipts.send(Instant::now());
                drop(update);
            }
            // Keep the stream open until every receiver has its last update,
            // so closing streams do not compete with the fan-out.
            Ok::<_, Status>(stream)
        }));
    }
    drop((ready_tx, receipts_tx));
    for _ in 0..watchers {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    // Let the server settle its per-stream work before reading memory.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss_bytes();
    let mut per_round = Vec::with_capacity(rounds);
    let mut cpu = Duration::ZERO;
    for round in 0..rounds {
        let cpu_before = server_cpu();
        let start = Instant::now();
        rotate(round as u64 + 2)?;
        let mut times = Vec::with_capacity(watchers);
        for _ in 0..watchers {
            let at = receipts
                .recv()
                .await
                .context("a watcher ended before its update")?;
            times.push(at.saturating_duration_since(start));
        }
        cpu += server_cpu().saturating_sub(cpu_before);
        times.sort_unstable();
        per_round.push([
            times.first().copied().unwrap_or_default(),
            quantile(&times, 0.5),
            quantile(&times, 0.99),
            times.last().copied().unwrap_or_default(),
        ]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut streams = Vec::with_capacity(watchers);
    for task in tasks {
        streams.push(task.await??);
    }
    drop(streams);
    let median_of = |i: usize| {
        let mut v: Vec<Duration> = per_round.iter().map(|r| r[i]).collect();
        v.sort_unstable();
        quantile(&v, 0.5)
    };
    Ok(WatchFigures {
        first: median_of(0),
        median: median_of(1),
        p99: median_of(2),
        last: median_of(3),
        cpu_per_update: cpu / (watchers * rounds).max(1) as u32,
        rss_per_stream: rss_after.saturating_sub(rss_before) as f64 / watchers.max(1) as f64,
    })
}

/// On-CPU time of the server runtime's threads so far.
fn server_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = 0u64;
    for task in tasks.flatten() {
        let dir = task.path();
        let named = std::fs::read_to_string(dir.join("comm"))
            .is_ok_and(|comm| comm.trim_end() == SERVER_THREAD);
        if !named {
            continue;
        }
        // schedstat: on-CPU nanoseconds first.
        if let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
            })
        {
            total += ns;
        }
    }
    Duration::from_nanos(total)
}

/// The process's resident memory.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs this bench again with `--memory-probe side` for one watch spec and
/// returns the RSS growth per stream it printed.
fn memory_probe(side: &str, spec: &str, log_level: &str) -> anyhow::Result<f64> {
    let output = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--memory-probe",
            side,
            "--watch",
            spec,
            "--log-level",
            log_level,
        ])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "the {side} memory probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("rss_per_stream="))
        .and_then(|v| v.trim().parse().ok())
        .context("the memory probe printed no figure")
}

/// The soft limit on open descriptors.
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(1024)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn print_table(rows: &[Row], reply_bytes: usize) {
    println!("GetSecretResponse: {reply_bytes} bytes from both servers\n");
    println!("| workload | coffer | bare tonic | ratio |");
    println!("|---|---|---|---|");
    for row in rows {
        match row {
            Row::Get {
                label,
                coffer,
                bare,
            } => {
                println!(
                    "| GetSecret {label}: req/s | {:.0} | {:.0} | {} |",
                    coffer.rate,
                    bare.rate,
                    ratio(coffer.rate, bare.rate)
                );
                for (name, c, b) in [
                    ("p50", coffer.p50, bare.p50),
                    ("p99", coffer.p99, bare.p99),
                    ("p999", coffer.p999, bare.p999),
                ] {
                    println!(
                        "| GetSecret {label}: {name} | {} | {} | {} |",
                        ms(c),
                        ms(b),
                        ratio(c.as_secs_f64(), b.as_secs_f64())
                    );
                }
                println!(
                    "| GetSecret {label}: server CPU/req | {} | {} | {} |",
                    us(coffer.cpu_per_req),
                    us(bare.cpu_per_req),
                    ratio(
                        coffer.cpu_per_req.as_secs_f64(),
                        bare.cpu_per_req.as_secs_f64()
                    )
                );
            }
            Row::Cold {
                coffer,
                bare,
                ring,
                ring_busy,
                threads,
            } => {
                println!(
                    "| cold token 1 x 16: req/s | {:.0} | {:.0} | {} |",
                    coffer.rate,
                    bare.rate,
                    ratio(coffer.rate, bare.rate)
                );
                println!(
                    "| cold token: server CPU/req | {} | {} | {} |",
                    us(coffer.cpu_per_req),
                    us(bare.cpu_per_req),
                    ratio(
                        coffer.cpu_per_req.as_secs_f64(),
                        bare.cpu_per_req.as_secs_f64()
                    )
                );
                let (ring_wall, ring_cpu) = *ring;
                println!(
                    "| cold token req/s vs ring RS256 verify/s (one thread, wall) | {:.0} | ring {:.0} | {} |",
                    coffer.rate,
                    ring_wall,
                    ratio(coffer.rate, ring_wall)
                );
                // Per CPU second: requests per second of the server's CPU
                // against ring's verifications per second of its own CPU.
                let cold_cpu = 1.0 / coffer.cpu_per_req.as_secs_f64().max(1e-9);
                let verify_cpu = 1.0
                    / coffer
                        .cpu_per_req
                        .saturating_sub(bare.cpu_per_req)
                        .as_secs_f64()
                        .max(1e-9);
                println!(
                    "| cold token req per server CPU-s vs ring RS256 verify per CPU-s | {cold_cpu:.0} | ring {ring_cpu:.0} | {} |",
                    ratio(cold_cpu, ring_cpu)
                );
                println!(
                    "| cold token: verification alone (CPU/req above bare) per CPU-s | {verify_cpu:.0} | ring {ring_cpu:.0} | {} |",
                    ratio(verify_cpu, ring_cpu)
                );
                // The server's threads all run at once under this load; on
                // vCPUs that share a core each runs slower than one alone.
                let (busy_wall, busy_cpu) = *ring_busy;
                println!(
                    "| ring RS256 verify per CPU-s: {threads} threads at once vs one alone | {busy_cpu:.0} | {ring_cpu:.0} | {} |",
                    ratio(busy_cpu, ring_cpu)
                );
                println!(
                    "| cold token req/s vs ring RS256 verify/s ({threads} threads, wall) | {:.0} | ring {busy_wall:.0} | {} |",
                    coffer.rate,
                    ratio(coffer.rate, busy_wall)
                );
                println!(
                    "| cold token: verification alone per CPU-s vs ring with {threads} threads busy | {verify_cpu:.0} | ring {busy_cpu:.0} | {} |",
                    ratio(verify_cpu, busy_cpu)
                );
            }
            Row::Watch {
                label,
                coffer,
                bare,
            } => {
                for (name, c, b) in [
                    ("first", coffer.first, bare.first),
                    ("median", coffer.median, bare.median),
                    ("p99", coffer.p99, bare.p99),
                    ("last", coffer.last, bare.last),
                ] {
                    println!(
                        "| rotation to {label}: {name} receiver | {} | {} | {} |",
                        ms(c),
                        ms(b),
                        ratio(c.as_secs_f64(), b.as_secs_f64())
                    );
                }
                println!(
                    "| rotation to {label}: server CPU per update | {} | {} | {} |",
                    us(coffer.cpu_per_update),
                    us(bare.cpu_per_update),
                    ratio(
                        coffer.cpu_per_update.as_secs_f64(),
                        bare.cpu_per_update.as_secs_f64()
                    )
                );
                println!(
                    "| rotation to {label}: RSS per stream (client and server, a process each) | {:.1} KiB | {:.1} KiB | {} |",
                    coffer.rss_per_stream / 1024.0,
                    bare.rss_per_stream / 1024.0,
                    ratio(coffer.rss_per_stream, bare.rss_per_stream)
                );
            }
            Row::Skipped(why) => println!("| skipped: {why} | | | |"),
        }
    }
}
