//! The server process seen from the parent bench: this binary again with
//! `--serve`, spawned, spoken to one line at a time over its stdin and
//! stdout, and killed when dropped.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use parking_lot::Mutex;

use crate::serve::ServerOptions;

#[derive(Clone, Copy)]
/// One of the two servers of the server process.
pub(crate) enum Side {
    Broker,
    Bare,
}

/// The server process (this bench with `--serve`) and its pipes. Dropping it
/// closes its stdin and kills it; if this process dies without dropping it
/// (`panic = "abort"`), the child reads EOF and exits.
pub(crate) struct ServerProcess {
    broker: String,
    bare: String,
    /// The bench token, minted by the child's `DevSigner`.
    pub(crate) token: String,
    /// The size of the answer to a `GetSecret`, the same from both servers.
    pub(crate) reply_bytes: usize,
    pipes: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    child: Mutex<Child>,
    stderr: Mutex<Option<std::thread::JoinHandle<String>>>,
}

impl ServerProcess {
    pub(crate) fn spawn(options: &ServerOptions) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--serve",
                "--server-threads",
                &options.threads.to_string(),
                "--log-level",
                &options.log_level,
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
            let mut pipes = self.pipes.lock();
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
    pub(crate) fn write(&self, n: u64) -> anyhow::Result<()> {
        self.ask(&format!("write {n}")).map(drop)
    }

    /// The bare server's broadcast of version `n`.
    pub(crate) fn broadcast(&self, n: u64) -> anyhow::Result<()> {
        self.ask(&format!("bare {n}")).map(drop)
    }

    /// The address of one side's server.
    pub(crate) fn url(&self, side: Side) -> &str {
        match side {
            Side::Broker => &self.broker,
            Side::Bare => &self.bare,
        }
    }

    /// On-CPU time of the server runtime's threads so far.
    pub(crate) fn cpu(&self) -> anyhow::Result<Duration> {
        self.ask_number("cpu").map(Duration::from_nanos)
    }

    /// The server process's resident memory.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        self.ask_number("rss")
    }

    /// Ends the child (if it still runs) and returns `what` with its stderr.
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

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}
