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

use std::time::Duration;

use anyhow::Context;
use clap::Parser;

mod bare;
mod bare_process;
mod child;
mod fixture;
mod grpc;
mod load;
mod procfs;
mod scale;
mod serve;
mod shipped;
mod stats;
mod table;
mod target;
mod tokens;

use std::path::PathBuf;

use crate::{
    child::{ServerProcess, Side},
    load::shipped::{CONFIGS, Plan},
    serve::ServerOptions,
    table::Row,
    target::InProcess,
};

/// Counts the heap this process holds, for the memory-per-entry rows: exact
/// bytes, where the RSS moves in pages and keeps what was freed. An atomic
/// add per allocation, on both sides of the in-process pair alike.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// The bytes of heap this process holds now.
pub(crate) fn heap_bytes() -> usize {
    HEAP.allocated()
}

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Every mode tiny (a few seconds in all): checks that the bench runs.
    #[arg(long)]
    quick: bool,
    /// How long each Get measurement runs.
    #[arg(long, default_value = "3s", value_parser = humantime_parse)]
    duration: Duration,
    /// Get loads as CONNECTIONSxIN_FLIGHT (in flight per connection) on
    /// each shipped configuration; `none` runs no Get load.
    #[arg(long, value_delimiter = ',', default_value = "1x16,4x64")]
    get: Vec<String>,
    /// The shipped broker's configurations, each against a bare server of
    /// its own: `rs256` (plaintext, RS256 token), `es256`, `tls` (both
    /// servers), `audit` (the broker's audit trail on); `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "rs256,es256,tls,audit")]
    shipped: Vec<String>,
    /// Skip the peers' rows (`bao agent` and OpenBao beside the shipped
    /// broker).
    #[arg(long)]
    no_peers: bool,
    /// The `bao` binary for the peers' rows (default: `.venv/bin/bao`).
    #[arg(long)]
    bao_bin: Option<PathBuf>,
    /// The `coffer-broker` binary to start (default: beside this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Get loads on the in-process pair (`--serve`: the broker built in
    /// the bench's server process, ES256 token); `none` for none.
    #[arg(long, value_delimiter = ',', default_value = "1x16,4x64")]
    in_process_get: Vec<String>,
    /// Fresh RS256 tokens for the cold mode (each used once, on the
    /// shipped `rs256` broker); 0 skips it.
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
    /// Policy sizes (rules) for the cost-as-work-grows rows; `none` skips.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    policy_rules: Vec<String>,
    /// Distinct watched paths on the shipped broker for the
    /// cost-as-work-grows rows; `none` skips.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    watched_paths: Vec<String>,
    /// Secrets of one pod's sidecar (the real `coffer-sidecar`, beside the
    /// broker binary) for the cost-as-work-grows rows; `none` skips.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pod_secrets: Vec<String>,
    /// Cached identities for the cost-as-work-grows rows; `none` skips.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    identities: Vec<String>,
    /// Internal: run the servers and answer the parent bench's commands on
    /// stdin (the bench runs itself so, its servers in a process of their
    /// own).
    #[arg(long, hide = true)]
    serve: bool,
    /// Internal: run the bare server alone (beside a shipped broker).
    #[arg(long, hide = true)]
    serve_bare: bool,
    #[command(flatten)]
    bare: bare_process::BareArgs,
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
    let options = ServerOptions {
        threads: args.server_threads,
        log_level: args.log_level.clone(),
    };
    if args.serve {
        return serve::serve(&options);
    }
    if args.serve_bare {
        return bare_process::serve_bare(&args.bare);
    }
    if args.quick {
        args.duration = Duration::from_millis(300);
        args.get = vec!["1x4".into()];
        args.in_process_get = vec!["1x4".into()];
        args.policy_rules = vec!["10".into(), "100".into()];
        args.identities = vec!["100".into()];
        args.watched_paths = vec!["1".into(), "300".into()];
        args.pod_secrets = vec!["1".into(), "10".into()];
        args.cold_tokens = 40;
        args.watch = vec!["50x5".into()];
        args.rounds = 2;
    }
    // The server process inherits the raised limit.
    procfs::raise_fd_limit();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let result = client_rt.block_on(run_all(&args, &options, &mut rows));
    // What was measured before a failure is still worth printing.
    table::print_table(&rows);
    result
}

/// The specs of a list flag, `none` dropped.
fn specs(list: &[String]) -> anyhow::Result<Vec<(usize, usize)>> {
    list.iter()
        .filter(|s| *s != "none")
        .map(|s| pair(s))
        .collect()
}

/// The broker binary: `--broker-bin`, else `coffer-broker` beside this
/// binary (cargo builds both into the same directory).
fn broker_bin(args: &Args) -> anyhow::Result<PathBuf> {
    let path = match &args.broker_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("coffer-broker"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it (cargo build --release -p coffer-broker) or give --broker-bin",
        path.display()
    );
    Ok(path)
}

/// Every mode in order: the Get loads, then the cold tokens, then the
/// watch runs, each adding its row.
async fn run_all(args: &Args, options: &ServerOptions, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let configs = args
        .shipped
        .iter()
        .filter(|s| *s != "none")
        .map(|name| {
            CONFIGS
                .iter()
                .find(|c| c.name == name)
                .copied()
                .with_context(|| format!("--shipped {name:?}: not one of rs256, es256, tls, audit"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gets = specs(&args.get)?;
    if !configs.is_empty() {
        let binary = broker_bin(args)?;
        let minter = tokens::Minter::new()?;
        let plan = Plan {
            binary: &binary,
            log_level: &args.log_level,
            gets: &gets,
            run_for: args.duration,
            cold_tokens: args.cold_tokens,
            peers: (!args.no_peers).then(|| load::peers::bao_bin(args.bao_bin.as_deref())),
        };
        for config in configs {
            rows.extend(load::shipped::rows(&plan, config, &minter).await?);
        }
    }
    let sizes = |list: &[String]| -> anyhow::Result<Vec<usize>> {
        let mut sizes = list
            .iter()
            .filter(|s| *s != "none")
            .map(|s| {
                s.parse::<usize>()
                    .with_context(|| format!("{s:?} is not a size"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        sizes.retain(|n| *n > 0);
        sizes.sort_unstable();
        Ok(sizes)
    };
    let (rules, identities) = (sizes(&args.policy_rules)?, sizes(&args.identities)?);
    if !rules.is_empty() || !identities.is_empty() {
        rows.push(Row::Note(
            "cost as work grows (this process, the broker's own types): the figure | the same figure at the smallest size | ratio".into(),
        ));
    }
    if !rules.is_empty() {
        rows.extend(scale::policy_rows(&rules, args.quick)?);
    }
    if !identities.is_empty() {
        rows.extend(scale::identity_rows(&identities, &tokens::Minter::new()?).await?);
    }
    let watched = sizes(&args.watched_paths)?;
    if !watched.is_empty() {
        let (binary, minter) = (broker_bin(args)?, tokens::Minter::new()?);
        rows.extend(
            load::paths::rows(
                &binary,
                &args.log_level,
                &minter,
                &watched,
                // Enough rotations that the work of opening the streams
                // (settling in the background) is a small part of the
                // figure: with 10 to 40 it was, and the figure grew with P.
                if args.quick {
                    args.rounds
                } else {
                    args.rounds.max(1000)
                },
            )
            .await?,
        );
    }
    let pod_secrets = sizes(&args.pod_secrets)?;
    if !pod_secrets.is_empty() {
        let (binary, minter) = (broker_bin(args)?, tokens::Minter::new()?);
        rows.extend(load::sidecar::rows(&binary, &args.log_level, &minter, &pod_secrets).await?);
    }
    let in_process = specs(&args.in_process_get)?;
    let watches = specs(&args.watch)?;
    if in_process.is_empty() && watches.is_empty() {
        return Ok(());
    }
    let server = ServerProcess::spawn(options)?;
    rows.push(Row::Note(format!(
        "in process (--serve: the broker built in the bench's server process, its server threads' CPU), ES256 {}-byte token: GetSecretResponse of {} bytes from both servers",
        server.token.len(),
        server.reply_bytes
    )));
    let (broker, bare) = (
        InProcess {
            server: &server,
            side: Side::Broker,
        },
        InProcess {
            server: &server,
            side: Side::Bare,
        },
    );
    let sides = load::get::Sides {
        broker: &broker,
        bare: &bare,
        token: &server.token,
        what: "in process",
    };
    for (conns, in_flight) in in_process {
        rows.push(load::get::compare(&sides, conns, in_flight, args.duration).await?);
    }
    let server = &server;
    for spec in args.watch.iter().filter(|s| *s != "none") {
        let (watchers, conns) = pair(spec)?;
        rows.push(load::watch::compare(server, options, watchers, conns, args.rounds).await?);
    }
    Ok(())
}
