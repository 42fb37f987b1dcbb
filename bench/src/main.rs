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
mod child;
mod fixture;
mod grpc;
mod load;
mod procfs;
mod serve;
mod stats;
mod table;

use crate::{child::ServerProcess, serve::ServerOptions, table::Row};

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
    let options = ServerOptions {
        threads: args.server_threads,
        log_level: args.log_level.clone(),
    };
    if args.serve {
        return serve::serve(&options);
    }
    if args.quick {
        args.duration = Duration::from_millis(300);
        args.get = vec!["1x4".into()];
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
    let server = ServerProcess::spawn(&options)?;
    let mut rows = Vec::new();
    client_rt.block_on(run_all(&args, &options, &server, &mut rows))?;
    table::print_table(&rows, server.reply_bytes);
    Ok(())
}

/// Every mode in order: the Get loads, then the cold tokens, then the
/// watch runs, each adding its row.
async fn run_all(
    args: &Args,
    options: &ServerOptions,
    server: &ServerProcess,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for spec in args.get.iter().filter(|s| *s != "none") {
        let (conns, in_flight) = pair(spec)?;
        rows.push(load::get::compare(server, conns, in_flight, args.duration).await?);
    }
    // Cold: every request carries a token the broker has never seen.
    if args.cold_tokens > 0 {
        let threads = args.server_threads;
        rows.push(load::cold::compare(server, args.cold_tokens, args.duration, threads).await?);
    }
    for spec in args.watch.iter().filter(|s| *s != "none") {
        let (watchers, conns) = pair(spec)?;
        rows.push(load::watch::compare(server, options, watchers, conns, args.rounds).await?);
    }
    Ok(())
}
