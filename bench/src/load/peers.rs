//! What a user would run instead, in the same table: a KV read through
//! `bao agent` as a caching API proxy (an OSS agent forwards static
//! secrets, so each read reaches OpenBao) and a read straight from
//! OpenBao (`bao server -dev`, KV v2), against the shipped broker's cached
//! `GetSecret`, each with 16 reads in flight for the same time, the order
//! rotating over three rounds (medians). The figure that crosses protocols
//! fairly is the server side's CPU per read: the agent's and OpenBao's
//! together for the agent, OpenBao's alone direct, the broker's for
//! Coffer. The HTTP client is 16 plain keep-alive HTTP/1.1 connections,
//! one blocking thread each, in this process.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::get;
use crate::{
    shipped::Shipped,
    stats::{median, median_f64},
    table::Row,
    target::process_cpu,
};

/// Reads in flight on each side.
const IN_FLIGHT: usize = 16;
/// OpenBao's dev root token (the dev server's own, on loopback).
const ROOT: &str = "root";

/// A `bao` process, killed when dropped.
struct Bao(Child);

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `bao` binary: `--bao-bin`, else `.venv/bin/bao` under the current
/// directory or the repository's (three levels above this binary, in
/// `target/PROFILE/`), where `scripts/install-test-deps` puts it.
pub(crate) fn bao_bin(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = given {
        return path.is_file().then(|| path.to_path_buf());
    }
    let repo = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()));
    [Some(PathBuf::from(".")), repo]
        .into_iter()
        .flatten()
        .map(|root| root.join(".venv/bin/bao"))
        .find(|path| path.is_file())
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request on a kept-alive connection; the body's length.
fn http(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, usize)> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Vault-Token: {ROOT}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body)?;
    Ok((status, length))
}

fn connect(port: u16) -> anyhow::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// Waits until `port` answers an HTTP request.
fn wait_http(port: u16, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut conn) = connect(port)
            && http(&mut conn, "GET", path, "").is_ok_and(|(status, _)| status == 200)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "port {port} did not answer {path}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `IN_FLIGHT` connections reading `path` from `port` for `run_for`:
/// reads per second.
fn http_load(port: u16, path: &str, run_for: Duration) -> anyhow::Result<(f64, u64)> {
    let start = Instant::now();
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<u64> {
                    let mut conn = connect(port)?;
                    let mut n = 0u64;
                    while start.elapsed() < run_for {
                        let (status, _) = http(&mut conn, "GET", path, "")?;
                        anyhow::ensure!(status == 200, "{path}: HTTP {status}");
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a reader panicked"))?)
            .collect::<anyhow::Result<Vec<u64>>>()
    })?;
    let n: u64 = counts.iter().sum();
    Ok((n as f64 / start.elapsed().as_secs_f64(), n))
}

/// The peers' rows beside the shipped broker `coffer` (read with `token`).
pub(crate) async fn rows(
    bao: &Path,
    coffer: &Shipped,
    token: &str,
    run_for: Duration,
) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let (server_port, agent_port) = (free_port()?, free_port()?);
    let server = Bao(Command::new(bao)
        .args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT}"),
            &format!("-dev-listen-address=127.0.0.1:{server_port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bao server -dev")?);
    wait_http(server_port, "/v1/sys/health")?;
    let value = format!("{:0>160}", 1);
    let mut conn = connect(server_port)?;
    let (status, _) = http(
        &mut conn,
        "POST",
        "/v1/secret/data/bench",
        &format!("{{\"data\":{{\"value\":\"{value}\"}}}}"),
    )?;
    anyhow::ensure!(status == 200, "writing the KV secret: HTTP {status}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, ROOT)?;
    let config = dir.path().join("agent.hcl");
    std::fs::write(
        &config,
        format!(
            "vault {{ address = \"http://127.0.0.1:{server_port}\" }}\n\
             auto_auth {{ method \"token_file\" {{ config = {{ token_file_path = \"{}\" }} }} }}\n\
             cache {{}}\n\
             api_proxy {{ use_auto_auth_token = true }}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{agent_port}\"\n  tls_disable = true\n}}\n",
            token_file.display()
        ),
    )?;
    let agent = Bao(Command::new(bao)
        .arg("agent")
        .arg(format!("-config={}", config.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bao agent")?);
    wait_http(agent_port, "/v1/secret/data/bench")?;
    let path = "/v1/secret/data/bench";
    let cpu =
        |pids: &[u32]| -> anyhow::Result<Duration> { pids.iter().map(|&p| process_cpu(p)).sum() };
    let (server_pid, agent_pid) = (server.0.id(), agent.0.id());
    // (reads/s, CPU per read) of each: agent, direct, coffer.
    let mut runs: [(Vec<f64>, Vec<Duration>); 3] = Default::default();
    for round in 0..3 {
        for i in 0..3 {
            let which = (round + i) % 3;
            let (rate, per_read) = match which {
                0 | 1 => {
                    let (port, pids) = if which == 0 {
                        (agent_port, vec![agent_pid, server_pid])
                    } else {
                        (server_port, vec![server_pid])
                    };
                    let before = cpu(&pids)?;
                    let (rate, n) = http_load(port, path, run_for)?;
                    let spent = cpu(&pids)?.saturating_sub(before);
                    (rate, spent / u32::try_from(n.max(1))?)
                }
                _ => {
                    let figures = get::get_load(coffer, token, 1, IN_FLIGHT, run_for).await?;
                    (figures.rate, figures.cpu_per_req)
                }
            };
            runs[which].0.push(rate);
            runs[which].1.push(per_read);
        }
    }
    let [agent_fig, direct, ours] = runs.map(|(rates, cpus)| (median_f64(rates), median(cpus)));
    let mut rows = vec![Row::Note(format!(
        "peers, {IN_FLIGHT} reads in flight, a {}-byte value: the figure | Coffer's cached GetSecret (shipped rs256) | ratio to Coffer",
        value.len()
    ))];
    for (name, (rate, per_read)) in [
        (
            "bao agent (caching API proxy) in front of OpenBao",
            agent_fig,
        ),
        ("OpenBao direct (KV v2)", direct),
    ] {
        rows.push(Row::Scale {
            label: format!("{name}: reads/s"),
            value: format!("{rate:.0}"),
            base: format!("{:.0}", ours.0),
            ratio: rate / ours.0.max(1e-9),
        });
        rows.push(Row::Scale {
            label: format!("{name}: server-side CPU per read"),
            value: format!("{:.1} µs", per_read.as_secs_f64() * 1e6),
            base: format!("{:.1} µs", ours.1.as_secs_f64() * 1e6),
            ratio: per_read.as_secs_f64() / ours.1.as_secs_f64().max(1e-12),
        });
    }
    drop(agent);
    drop(server);
    Ok(rows)
}
