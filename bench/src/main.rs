//! `coffer-bench`: the broker against a bare tonic server, in the same run.
//!
//! Both servers run in a child process of their own (this binary again, with
//! the hidden `--serve`), on one runtime whose threads are named
//! `bench-server`; the load runs in this process (`bench-client` threads).
//! Each side of a connection therefore holds one descriptor in its own
//! process, so 10,000 connections fit a 20,000-descriptor limit (both sides'
//! 10,000 at once need twice that: the bench raises the limit when it may,
//! else the sides take turns). The parent drives the child over its
//! stdin/stdout, one line per command: the store write or bare broadcast
//! that starts a rotation, and the server threads' on-CPU time (the child
//! sums the CPU clocks of its `bench-server` threads, found in
//! `/proc/self/task`), read around each measurement so client work is never
//! charged to the server. The bare server implements the same
//! `SecretBroker::GetSecret` (and `WatchSecrets` as a plain broadcast) with
//! the very message the broker serves, and no authentication.
//!
//! Modes: cached `GetSecret` at C connections x N in flight per connection
//! (three pairs of runs, alternating which side goes first; each figure the
//! median); cold tokens (a fresh valid RS256 token per request, beside the
//! same load with one cached token and ring's raw RS256 verify rate,
//! measured in this process with no load running); N watchers over M
//! connections and several rotations, both sides' watchers open at once and
//! their rotations alternating. Memory per watch stream is the server
//! process's RSS growth, in a fresh server process per side. `--quick` runs
//! every mode tiny (seconds): CI checks that the table prints.

use std::{
    io::{BufRead, BufReader, Read, Write},
    num::NonZeroUsize,
    pin::Pin,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use clap::Parser;
use coffer_broker::{
    auth::{
        Authenticator, BearerToken,
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
/// Pairs of runs per Get load (one run of each side per pair).
const GET_PAIRS: usize = 3;
/// Descriptors each process keeps beside its connections.
const SPARE_FDS: usize = 256;

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
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// The broker's log filter (its default is `info`); logs go to a sink.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Internal: run the servers and answer the parent bench's commands on
    /// stdin (the bench runs itself so, its servers in a process of their
    /// own).
    #[arg(long, hide = true)]
    serve: bool,
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
    anyhow::ensure!(
        args.server_threads > 0,
        "--server-threads must be at least 1"
    );
    if args.serve {
        return serve(&args);
    }
    if args.quick {
        args.duration = Duration::from_millis(300);
        args.get = vec!["1x4".into()];
        args.cold_tokens = 40;
        args.watch = vec!["50x5".into()];
        args.rounds = 2;
    }
    // The server process inherits the raised limit.
    raise_fd_limit();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let server = ServerProcess::spawn(&args)?;
    let mut rows = Vec::new();
    client_rt.block_on(run_all(&args, &server, &mut rows))?;
    print_table(&rows, server.reply_bytes);
    Ok(())
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
fn serve(args: &Args) -> anyhow::Result<()> {
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
            ("cpu", _) => Ok(format!("cpu {}", server_cpu().as_nanos())),
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

/// The server process (this bench with `--serve`) and its pipes. Dropping it
/// closes its stdin and kills it; if this process dies without dropping it
/// (`panic = "abort"`), the child reads EOF and exits.
struct ServerProcess {
    broker: String,
    bare: String,
    /// The bench token, minted by the child's `DevSigner`.
    token: String,
    reply_bytes: usize,
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    child: Mutex<Child>,
    stderr: Mutex<Option<std::thread::JoinHandle<String>>>,
}

impl ServerProcess {
    fn spawn(args: &Args) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--serve",
                "--server-threads",
                &args.server_threads.to_string(),
                "--log-level",
                &args.log_level,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the server process")?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            anyhow::bail!("the server process has no pipes");
        };
        // Read all along, so a chatty child never blocks on a full pipe;
        // the tail is kept for errors.
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            let tail = text.len().saturating_sub(8192);
            String::from_utf8_lossy(&text[tail..]).into_owned()
        });
        let mut server = Self {
            broker: String::new(),
            bare: String::new(),
            token: String::new(),
            reply_bytes: 0,
            pipes: Mutex::new((stdin, BufReader::new(stdout))),
            child: Mutex::new(child),
            stderr: Mutex::new(Some(stderr)),
        };
        let ready = server.read_line()?;
        // The line carries the token: never quote it in an error.
        let fields = ready
            .strip_prefix("ready ")
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|f| f.split_once('='))
                    .collect::<std::collections::HashMap<_, _>>()
            })
            .unwrap_or_default();
        let field = |name: &str| fields.get(name).map(|v| v.to_string());
        match (
            field("broker"),
            field("bare"),
            field("token"),
            field("reply_bytes").and_then(|n| n.parse().ok()),
        ) {
            (Some(broker), Some(bare), Some(token), Some(reply_bytes)) => {
                server.broker = broker;
                server.bare = bare;
                server.token = token;
                server.reply_bytes = reply_bytes;
                Ok(server)
            }
            _ => Err(server.failed("the server process's first line is not its `ready` line")),
        }
    }

    /// One line from the child (the `ready` line, or the answer to a
    /// command written under the same lock); its end (EOF) is an error with
    /// its stderr.
    fn read_line(&self) -> anyhow::Result<String> {
        self.exchange(None)
    }

    /// Sends one command and returns the child's answer, both under one lock
    /// so answers never cross.
    fn ask(&self, command: &str) -> anyhow::Result<String> {
        let answer = self.exchange(Some(command))?;
        match answer.strip_prefix("error ") {
            Some(why) => anyhow::bail!("the server process could not {command:?}: {why}"),
            None => Ok(answer),
        }
    }

    fn exchange(&self, command: Option<&str>) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = {
            let mut pipes = self
                .pipes
                .lock()
                .map_err(|_| anyhow::anyhow!("the server process's pipes are poisoned"))?;
            let (stdin, stdout) = &mut *pipes;
            command
                .map_or(Ok(()), |c| {
                    writeln!(stdin, "{c}").and_then(|()| stdin.flush())
                })
                .and_then(|()| stdout.read_line(&mut line))
        };
        match read {
            Ok(0) => Err(self.failed("the server process ended")),
            Ok(_) => Ok(line.trim_end().to_string()),
            Err(e) => Err(self.failed(&format!("talking to the server process: {e}"))),
        }
    }

    fn ask_number(&self, command: &str) -> anyhow::Result<u64> {
        let answer = self.ask(command)?;
        answer
            .strip_prefix(command)
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the server process answered {command:?} with {answer:?}"))
    }

    /// The broker store's rotation to version `n`, done with its
    /// notification when this returns.
    fn write(&self, n: u64) -> anyhow::Result<()> {
        self.ask(&format!("write {n}")).map(drop)
    }

    /// The bare server's broadcast of version `n`.
    fn broadcast(&self, n: u64) -> anyhow::Result<()> {
        self.ask(&format!("bare {n}")).map(drop)
    }

    /// The address of one side's server.
    fn url(&self, side: Side) -> &str {
        match side {
            Side::Broker => &self.broker,
            Side::Bare => &self.bare,
        }
    }

    /// On-CPU time of the server runtime's threads so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        self.ask_number("cpu").map(Duration::from_nanos)
    }

    /// The server process's resident memory.
    fn rss(&self) -> anyhow::Result<u64> {
        self.ask_number("rss")
    }

    /// Ends the child (if it still runs) and returns `what` with its stderr.
    fn failed(&self, what: &str) -> anyhow::Error {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let stderr = self
            .stderr
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .and_then(|s| s.join().ok())
            .unwrap_or_default();
        anyhow::anyhow!("{what}; its stderr:\n{}", stderr.trim_end())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Descriptors the bench asks for: both sides' 10,000 connections at once,
/// in each process.
const WANTED_FDS: u64 = 65_536;

/// Raises the limit on open descriptors to [`WANTED_FDS`] (root may raise
/// the hard limit, up to the kernel's `nr_open`), else the soft limit to
/// the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let wanted = WANTED_FDS.min(nr_open).max(hard);
    if soft >= wanted || setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return;
    }
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("coffer-bench: keeping the descriptor limit at {soft}: {e}");
    }
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

impl Figures {
    /// The median of each figure over `runs` (each taken on its own).
    fn median(runs: &[Figures]) -> Figures {
        let of = |figure: fn(&Figures) -> Duration| median(runs.iter().map(figure).collect());
        Figures {
            rate: median_f64(runs.iter().map(|f| f.rate).collect()),
            p50: of(|f| f.p50),
            p99: of(|f| f.p99),
            p999: of(|f| f.p999),
            cpu_per_req: of(|f| f.cpu_per_req),
        }
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    quantile(&values, 0.5)
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
        /// The broker under the same load with one (cached) token.
        cached: Figures,
        /// The bare server likewise.
        bare_cached: Figures,
        /// ring on one thread: verifications per wall second and per CPU
        /// second.
        ring: (f64, f64),
        /// ring on `threads` threads at once, likewise (all threads).
        ring_busy: (f64, f64),
        threads: usize,
        /// The broker's own verifier and ring's raw verify on the same
        /// fresh tokens, interleaved on one thread: per CPU second.
        verifier: (f64, f64),
    },
    Watch {
        label: String,
        coffer: WatchFigures,
        bare: WatchFigures,
        /// Both sides' streams were open at once, their rotations
        /// alternating.
        together: bool,
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

async fn run_all(args: &Args, server: &ServerProcess, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for spec in args.get.iter().filter(|s| *s != "none") {
        let (conns, in_flight) = pair(spec)?;
        // Warm both (connections, caches), then measure GET_PAIRS pairs of
        // runs, each pair in the other order (bare, coffer, coffer, bare,
        // ...), and keep the median of each figure: drift and noise hit
        // both sides alike.
        let warm = args.duration / 4;
        get_load(server, &server.bare, conns, in_flight, warm).await?;
        get_load(server, &server.broker, conns, in_flight, warm).await?;
        let (mut bares, mut coffers) = (Vec::new(), Vec::new());
        for pair in 0..GET_PAIRS {
            let order = if pair % 2 == 0 {
                [Side::Bare, Side::Broker]
            } else {
                [Side::Broker, Side::Bare]
            };
            for side in order {
                let figures =
                    get_load(server, server.url(side), conns, in_flight, args.duration).await?;
                match side {
                    Side::Bare => bares.push(figures),
                    Side::Broker => coffers.push(figures),
                }
            }
        }
        let (coffer, bare) = (Figures::median(&coffers), Figures::median(&bares));
        rows.push(Row::Get {
            label: format!("{conns} x {in_flight}"),
            coffer,
            bare,
        });
    }

    // Cold: every request carries a token the broker has never seen.
    if args.cold_tokens > 0 {
        let mut minted = mint_cold(args.cold_tokens + 1)?;
        // One token kept back: every request of the cached run carries it.
        let cached_token = minted.pop().context("no token minted")?;
        let tokens = Arc::new(minted);
        let run_for = args.duration.min(Duration::from_secs(2));
        let ring = ring_rs256_rate(&tokens[0], run_for, 1)?;
        // As the server runs under the cold load: every server thread busy
        // at once (on this machine's two vCPUs, which may share a core).
        let ring_busy = ring_rs256_rate(&tokens[0], run_for, args.server_threads)?;
        let verifier = verifier_vs_ring(&tokens)?;
        // The same load with one token on each side too: the broker verifies
        // it once, and the client's HPACK table carries it after the first
        // request, so neither server decodes it again.
        let [bare, bare_cached, cached, coffer] =
            cold_loads(server, &tokens, &cached_token).await?;
        rows.push(Row::Cold {
            coffer,
            bare,
            cached,
            bare_cached,
            ring,
            ring_busy,
            threads: args.server_threads,
            verifier,
        });
    }

    let limit = fd_limit();
    for spec in args.watch.iter().filter(|s| *s != "none") {
        let (watchers, conns) = pair(spec)?;
        // Each connection costs one descriptor on each side (the client's
        // end here, the server's in the server process).
        let conns = conns.clamp(1, watchers.max(1));
        if conns + SPARE_FDS > limit {
            rows.push(Row::Skipped(format!(
                "watch {watchers} over {conns} connections: needs {} descriptors on each side, the limit is {limit}",
                conns + SPARE_FDS
            )));
            continue;
        }
        // Both sides' watchers open at once when the descriptors allow, so
        // their rotations can alternate.
        let together = 2 * conns + SPARE_FDS <= limit;
        let (mut coffer, mut bare) =
            watch_pair(server, watchers, conns, args.rounds, together).await?;
        // Memory in a fresh server process per side: in one process the
        // side measured second would reuse the heap the first one grew.
        coffer.rss_per_stream = memory_probe(args, Side::Broker, watchers, conns).await?;
        bare.rss_per_stream = memory_probe(args, Side::Bare, watchers, conns).await?;
        rows.push(Row::Watch {
            label: format!("{watchers} over {conns}"),
            coffer,
            bare,
            together,
        });
    }
    Ok(())
}

/// The Get load: `conns` connections, `in_flight` requests on each.
async fn get_load(
    server: &ServerProcess,
    url: &str,
    conns: usize,
    in_flight: usize,
    run_for: Duration,
) -> anyhow::Result<Figures> {
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(connect(url).await?);
    }
    let cpu_before = server.cpu()?;
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for channel in &channels {
        for _ in 0..in_flight {
            let mut client = SecretBrokerClient::new(channel.clone());
            let token = server.token.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    latencies.push(timed_get(&mut client, &token).await?);
                }
                Ok::<_, Status>(latencies)
            }));
        }
    }
    gather(server, tasks, start, cpu_before).await
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
    server: &ServerProcess,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, Status>>>,
    start: Instant,
    cpu_before: Duration,
) -> anyhow::Result<Figures> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let cpu = server.cpu()?.saturating_sub(cpu_before);
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

/// RS256 tokens, each for another pod so no two are alike, signed with the
/// RSA fixture key (the server process's key set trusts it).
fn mint_cold(count: usize) -> anyhow::Result<Vec<String>> {
    let rsa = &jsonwebtoken::EncodingKey::from_rsa_pem(RSA_PEM)?;
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
                                rsa,
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
    Ok(tokens)
}

/// ring's own RS256 verification rate on pre-decoded bytes: per second of
/// wall time, and per second of this thread's CPU time (steady under load).
fn ring_rs256_rate(token: &str, run_for: Duration, threads: usize) -> anyhow::Result<(f64, f64)> {
    let key = rsa_fixture_key()?;
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

/// The broker's own authenticator (the verified-token cache over the JWT
/// verifier, as the broker builds it) against ring's raw RS256 verify, on
/// the same fresh tokens, one thread, interleaved in chunks so both see the
/// same machine. The authenticator runs as a cold request runs it: the cache
/// misses, the token is checked whole (signature, then claims) and the cache
/// keeps it; ring gets each token's signature already decoded. Returns
/// (authenticator, ring) verifications per CPU second.
fn verifier_vs_ring(tokens: &[String]) -> anyhow::Result<(f64, f64)> {
    let keys = KeySet::from_jwks_json(RSA_JWKS)?;
    let verifier = JwtVerifier::new(VerifierConfig::new(ISSUER, AUDIENCE), keys);
    let authn = CachingAuthenticator::new(
        Arc::new(verifier),
        NonZeroUsize::new(DEFAULT_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
    );
    let key = rsa_fixture_key()?;
    let prepared = tokens
        .iter()
        .map(|t| {
            let (message, sig) = t.rsplit_once('.').context("not a JWT")?;
            Ok((BearerToken::new(t), message, URL_SAFE_NO_PAD.decode(sig)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A thread of its own: the caller is a runtime's, and its CPU time is
    // read alone.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<(f64, f64)> {
                let rt = tokio::runtime::Builder::new_current_thread().build()?;
                let (mut authn_rates, mut ring_rates) = (Vec::new(), Vec::new());
                for chunk in prepared.chunks(200) {
                    let before = thread_cpu();
                    for (_, message, sig) in chunk {
                        key.verify(
                            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                            message.as_bytes(),
                            sig,
                        )
                        .map_err(|_| anyhow::anyhow!("raw RSA verify failed"))?;
                    }
                    let between = thread_cpu();
                    rt.block_on(async {
                        for (token, _, _) in chunk {
                            authn.authenticate(token).await.map_err(|e| {
                                anyhow::anyhow!("the verifier refused a fresh token: {e}")
                            })?;
                        }
                        Ok::<_, anyhow::Error>(())
                    })?;
                    let rate = |cpu: Duration| chunk.len() as f64 / cpu.as_secs_f64().max(1e-9);
                    ring_rates.push(rate(between.saturating_sub(before)));
                    authn_rates.push(rate(thread_cpu().saturating_sub(between)));
                }
                // The median chunk of each: a chunk that a neighbour's burst
                // slowed does not weigh on the figure.
                Ok((median_f64(authn_rates), median_f64(ring_rates)))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the verifier thread panicked"))?
    })
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// The RSA fixture key the cold tokens are signed with, for ring.
fn rsa_fixture_key() -> anyhow::Result<ring::signature::RsaPublicKeyComponents<Vec<u8>>> {
    let jwks: serde_json::Value = serde_json::from_slice(RSA_JWKS)?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == RSA_KID))
        .context("the RSA fixture key is missing")?;
    let b64 = |s: &serde_json::Value| URL_SAFE_NO_PAD.decode(s.as_str().unwrap_or_default());
    Ok(ring::signature::RsaPublicKeyComponents {
        n: b64(&jwk["n"])?,
        e: b64(&jwk["e"])?,
    })
}

/// On-CPU time so far of thread `tid` of this process, from its CPU clock:
/// the id Linux gives it is `(!tid << 3) | 6` (per thread, scheduler time;
/// glibc's `pthread_getcpuclockid` computes the same).
fn thread_cpu_of(tid: i32) -> Option<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let clock = ClockId::from_raw((!tid << 3) | 6);
    let t = clock_gettime(clock).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// On-CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    // The clock, not `/proc/thread-self/schedstat`: a running thread's
    // schedstat moves only at scheduler ticks (4 ms here), the clock counts
    // to the nanosecond.
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, |t| {
        Duration::new(
            u64::try_from(t.tv_sec()).unwrap_or(0),
            u32::try_from(t.tv_nsec()).unwrap_or(0),
        )
    })
}

/// One connection, 16 in flight, each request with the next unused token.
/// Tokens per turn of the cold loads.
const COLD_CHUNK: usize = 500;

/// The cold loads, in turns of [`COLD_CHUNK`] requests so that drift and
/// noise hit each alike: fresh tokens to the bare server, one token to the
/// bare server, one token to the broker, fresh tokens to the broker (each
/// 1 connection x 16 in flight, the order of the four rotating each turn).
async fn cold_loads(
    server: &ServerProcess,
    tokens: &[String],
    cached_token: &str,
) -> anyhow::Result<[Figures; 4]> {
    let loads = [
        (Side::Bare, false),
        (Side::Bare, true),
        (Side::Broker, true),
        (Side::Broker, false),
    ];
    let bare = connect(&server.bare).await?;
    let broker = connect(&server.broker).await?;
    // Each load's latencies, time, and CPU per request of each turn.
    let mut totals: [(Vec<Duration>, Duration, Vec<Duration>); 4] = Default::default();
    for (turn, chunk) in tokens.chunks(COLD_CHUNK).enumerate() {
        let same = vec![cached_token.to_string(); chunk.len()];
        for i in 0..loads.len() {
            let load = (turn + i) % loads.len();
            let (side, one_token) = loads[load];
            let channel = match side {
                Side::Bare => bare.clone(),
                Side::Broker => broker.clone(),
            };
            let chunk = Arc::new(if one_token {
                same.clone()
            } else {
                chunk.to_vec()
            });
            let cpu_before = server.cpu()?;
            let start = Instant::now();
            let latencies = cold_load(channel, chunk).await?;
            let cpu = server.cpu()?.saturating_sub(cpu_before);
            let total = &mut totals[load];
            total.1 += start.elapsed();
            total
                .2
                .push(cpu / u32::try_from(latencies.len().max(1)).unwrap_or(u32::MAX));
            total.0.extend(latencies);
        }
    }
    // Server CPU per request: the median turn's, so that a turn a
    // neighbour's burst slowed does not weigh on the figure.
    Ok(totals.map(|(latencies, elapsed, cpu_per_req)| Figures {
        cpu_per_req: median(cpu_per_req),
        ..figures(latencies, elapsed, Duration::ZERO)
    }))
}

/// `tokens` once each, 16 requests in flight on `channel`.
async fn cold_load(channel: Channel, tokens: Arc<Vec<String>>) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = SecretBrokerClient::new(channel.clone());
        let (tokens, next) = (Arc::clone(&tokens), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(token) = tokens.get(next.fetch_add(1, Ordering::Relaxed)) {
                latencies.push(timed_get(&mut client, token).await?);
            }
            Ok::<_, Status>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(tokens.len());
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}

/// The broker's and the bare server's `watchers` streams over `conns`
/// connections each, and `rounds` rotations of each side. With `together`,
/// both sides' streams are open at once and each round rotates both, in
/// turn, first one side then the other, so drift and noise hit both alike;
/// otherwise (too few descriptors for both at once) the sides take turns,
/// broker, bare, bare, broker, half the rounds each turn.
/// Each figure is the median over the rounds; the server CPU is the whole
/// fan-out's, per update sent.
async fn watch_pair(
    server: &ServerProcess,
    watchers: usize,
    conns: usize,
    rounds: usize,
    together: bool,
) -> anyhow::Result<(WatchFigures, WatchFigures)> {
    let mut broker = Rotations::default();
    let mut bare = Rotations::default();
    if together {
        let mut broker_side = Watchers::open(server, Side::Broker, watchers, conns, rounds).await?;
        let mut bare_side = Watchers::open(server, Side::Bare, watchers, conns, rounds).await?;
        for round in 0..rounds {
            let version = round as u64 + 2;
            if round % 2 == 0 {
                broker.push(broker_side.rotate(server, version).await?);
                bare.push(bare_side.rotate(server, version).await?);
            } else {
                bare.push(bare_side.rotate(server, version).await?);
                broker.push(broker_side.rotate(server, version).await?);
            }
        }
        broker_side.close().await?;
        bare_side.close().await?;
    } else {
        // One side at a time, in the order broker, bare, bare, broker, each
        // run half the rounds.
        let half = rounds.div_ceil(2);
        for side in [Side::Broker, Side::Bare, Side::Bare, Side::Broker] {
            let figures = match side {
                Side::Broker => &mut broker,
                Side::Bare => &mut bare,
            };
            // Versions go on rising across the side's runs.
            let first = figures.rounds.len() as u64 + 2;
            let mut open = Watchers::open(server, side, watchers, conns, half).await?;
            for round in 0..half {
                figures.push(open.rotate(server, first + round as u64).await?);
            }
            open.close().await?;
        }
    }
    Ok((broker.figures(watchers), bare.figures(watchers)))
}

/// One side's rounds: each round's first, median, p99 and last receiver,
/// and the server CPU of all rounds.
#[derive(Default)]
struct Rotations {
    rounds: Vec<[Duration; 4]>,
    cpu: Duration,
}

impl Rotations {
    fn push(&mut self, (receivers, cpu): ([Duration; 4], Duration)) {
        self.rounds.push(receivers);
        self.cpu += cpu;
    }

    fn figures(&self, watchers: usize) -> WatchFigures {
        let of = |i: usize| median(self.rounds.iter().map(|r| r[i]).collect());
        let updates = watchers.saturating_mul(self.rounds.len()).max(1);
        WatchFigures {
            first: of(0),
            median: of(1),
            p99: of(2),
            last: of(3),
            cpu_per_update: self.cpu / u32::try_from(updates).unwrap_or(u32::MAX),
            rss_per_stream: 0.0,
        }
    }
}

/// One side's open watch streams, each waiting for its next update.
struct Watchers {
    side: Side,
    watchers: usize,
    /// When each receiver got an update.
    receipts: tokio::sync::mpsc::UnboundedReceiver<Instant>,
    tasks: Vec<tokio::task::JoinHandle<Result<tonic::Streaming<v1::WatchSecretsResponse>, Status>>>,
    /// The server process's RSS growth from after the connections opened to
    /// after every snapshot arrived, per stream.
    rss_per_stream: f64,
}

impl Watchers {
    /// Opens `watchers` streams over `conns` connections to `side`, each to
    /// receive its snapshot then `rounds` updates, and waits for every
    /// snapshot.
    async fn open(
        server: &ServerProcess,
        side: Side,
        watchers: usize,
        conns: usize,
        rounds: usize,
    ) -> anyhow::Result<Self> {
        let conns = conns.clamp(1, watchers.max(1));
        let mut channels = Vec::with_capacity(conns);
        for _ in 0..conns {
            channels.push(connect(server.url(side)).await?);
        }
        // Let the server settle its accepted connections before reading memory.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_before = server.rss()?;
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers.max(1));
        let (receipts_tx, receipts) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut tasks = Vec::with_capacity(watchers);
        for i in 0..watchers {
            let mut client = SecretBrokerClient::new(channels[i % conns].clone());
            let request = authed(
                v1::WatchSecretsRequest {
                    paths: vec![PATH.into()],
                },
                &server.token,
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
                // Keep the stream open until every receiver has its last
                // update, so closing streams do not compete with the fan-out.
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
        let rss_after = server.rss()?;
        Ok(Self {
            side,
            watchers,
            receipts,
            tasks,
            rss_per_stream: rss_after.saturating_sub(rss_before) as f64 / watchers.max(1) as f64,
        })
    }

    /// Rotates this side to `version` and waits for every receiver: the
    /// first, median, p99 and last receiver from the rotation, and the
    /// server CPU it took.
    async fn rotate(
        &mut self,
        server: &ServerProcess,
        version: u64,
    ) -> anyhow::Result<([Duration; 4], Duration)> {
        let cpu_before = server.cpu()?;
        let start = Instant::now();
        match self.side {
            Side::Broker => server.write(version)?,
            Side::Bare => server.broadcast(version)?,
        }
        let mut times = Vec::with_capacity(self.watchers);
        for _ in 0..self.watchers {
            let at = self
                .receipts
                .recv()
                .await
                .context("a watcher ended before its update")?;
            times.push(at.saturating_duration_since(start));
        }
        let cpu = server.cpu()?.saturating_sub(cpu_before);
        times.sort_unstable();
        // Let the connections drain before the next rotation.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok((
            [
                times.first().copied().unwrap_or_default(),
                quantile(&times, 0.5),
                quantile(&times, 0.99),
                times.last().copied().unwrap_or_default(),
            ],
            cpu,
        ))
    }

    /// Waits for every stream's last update, then closes them all.
    async fn close(self) -> anyhow::Result<()> {
        let mut streams = Vec::with_capacity(self.watchers);
        for task in self.tasks {
            streams.push(task.await??);
        }
        drop(streams);
        Ok(())
    }
}

/// On-CPU time of this process's server runtime threads so far (read in the
/// server process).
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
        // The thread's CPU clock: counts to the nanosecond, where a running
        // thread's schedstat moves only at scheduler ticks (4 ms here).
        if let Some(cpu) = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse::<i32>().ok())
            .and_then(thread_cpu_of)
        {
            total += u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
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

/// This process's resident memory.
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

#[derive(Clone, Copy)]
enum Side {
    Broker,
    Bare,
}

/// Opens `watchers` streams over `conns` connections on one side of a fresh
/// server process and returns that process's RSS growth per stream.
async fn memory_probe(
    args: &Args,
    side: Side,
    watchers: usize,
    conns: usize,
) -> anyhow::Result<f64> {
    let server = ServerProcess::spawn(args)?;
    let open = Watchers::open(&server, side, watchers, conns, 0).await?;
    let rss_per_stream = open.rss_per_stream;
    open.close().await?;
    Ok(rss_per_stream)
}

/// The soft limit on open descriptors (of each process: the server process
/// inherits it).
fn fd_limit() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        })
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
                cached,
                bare_cached,
                ring,
                ring_busy,
                threads,
                verifier,
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
                // What a fresh token adds to a request on the broker, less
                // what it adds on the bare server (a new header to decode):
                // the verification as a request pays it (signature, claims,
                // cache insertion), without the rest of the request.
                let added = |cold: &Figures, cached: &Figures| {
                    cold.cpu_per_req.saturating_sub(cached.cpu_per_req)
                };
                let verification = added(coffer, cached).saturating_sub(added(bare, bare_cached));
                let in_request = 1.0 / verification.as_secs_f64().max(1e-9);
                // Against ring's rate on the same tokens, interleaved with
                // the broker's verifier (below): the steadiest ring figure
                // of the run, and the higher.
                let (authn, ring_same) = *verifier;
                println!(
                    "| cold token: verification in the request (CPU/req a fresh token adds on the broker, {} over {}, less what it adds on bare, {} over {}) per CPU-s, vs ring on the same tokens | {in_request:.0} | ring {ring_same:.0} | {} |",
                    us(coffer.cpu_per_req),
                    us(cached.cpu_per_req),
                    us(bare.cpu_per_req),
                    us(bare_cached.cpu_per_req),
                    ratio(in_request, ring_same)
                );
                // The broker's authenticator alone, in this process: what a
                // cold request verifies, without the gRPC work around it.
                println!(
                    "| broker token verifier vs ring RS256 verify, same fresh tokens, interleaved (per CPU-s) | {authn:.0} | ring {ring_same:.0} | {} |",
                    ratio(authn, ring_same)
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
                together,
            } => {
                if !together {
                    println!(
                        "| rotation to {label}: too few descriptors for both sides at once: the sides took turns (broker, bare, bare, broker) | | | |"
                    );
                }
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
                    "| rotation to {label}: server RSS per stream (a fresh server process per side) | {:.1} KiB | {:.1} KiB | {} |",
                    coffer.rss_per_stream / 1024.0,
                    bare.rss_per_stream / 1024.0,
                    ratio(coffer.rss_per_stream, bare.rss_per_stream)
                );
            }
            Row::Skipped(why) => println!("| skipped: {why} | | | |"),
        }
    }
}
