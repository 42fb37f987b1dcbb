//! Telling the application that its files changed: a signal to a process
//! found by pidfile or by name, a command, or an HTTP POST.
//!
//! Each configured action has its own task. The watch loop only records
//! which files changed and wakes the task, so a slow or failing action never
//! blocks other secrets or the next update. A failed run is logged and
//! retried with backoff. Changes that arrive while a run is being retried are
//! folded into that run: the app reads the latest files either way, and it
//! is told once per change it has not yet been told about.

use std::{collections::BTreeSet, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use coffer_runtime::Backoff;
use nix::sys::signal::Signal;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::writer::FileName;

/// How often a failing action is tried for one change before giving up
/// until the next change.
pub const MAX_ATTEMPTS: u32 = 8;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An action as written in the configuration: exactly one of `signal`
/// (with `pidFile` or `processName`), `command`, or `post`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActionSpec {
    /// A signal name such as `HUP`, `SIGHUP` or `USR1`.
    #[serde(default)]
    pub signal: Option<String>,
    /// The file holding the pid to signal.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// Signal every process with this name (needs `shareProcessNamespace`).
    #[serde(default)]
    pub process_name: Option<String>,
    /// A command and its arguments, run without a shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// An `http://` URL to POST to.
    #[serde(default)]
    pub post: Option<String>,
    /// How long a command or POST may take, in seconds (default 30).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// A validated action.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Send `signal` to the process(es) `target` finds.
    Signal { signal: Signal, target: Target },
    /// Run `argv` with `COFFER_CHANGED_FILES` set; success is exit status 0.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// POST `{"files": [...]}` to `url`; success is a 2xx answer.
    Post { url: hyper::Uri, timeout: Duration },
}

/// How a signal finds its process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// The pid written in this file.
    PidFile(PathBuf),
    /// Every process whose name (`comm`, or `argv[0]`'s base name) is this.
    Name(String),
}

/// Why one run of an action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    #[error("cannot read pid file {path}: {source}")]
    PidFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {0} does not hold a pid")]
    BadPid(String),
    #[error("no process is named {0:?}")]
    NoProcess(String),
    #[error("cannot signal pid {pid}: {source}")]
    Kill {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("command could not start: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("command exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("POST failed: {0}")]
    Http(String),
    #[error("POST answered {0}")]
    Status(hyper::StatusCode),
}

impl ActionSpec {
    /// Checks that exactly one action is described, and describes it well.
    pub fn validate(&self) -> Result<Action, String> {
        let timeout = self
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        match (&self.signal, &self.command, &self.post) {
            (Some(name), None, None) => {
                let upper = name.to_ascii_uppercase();
                let full = if upper.starts_with("SIG") {
                    upper
                } else {
                    format!("SIG{upper}")
                };
                let signal =
                    Signal::from_str(&full).map_err(|_| format!("unknown signal {name:?}"))?;
                let target = match (&self.pid_file, &self.process_name) {
                    (Some(file), None) => Target::PidFile(file.clone()),
                    (None, Some(name)) if !name.is_empty() => Target::Name(name.clone()),
                    _ => return Err("a signal needs exactly one of pidFile or processName".into()),
                };
                Ok(Action::Signal { signal, target })
            }
            (None, Some(argv), None) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err("command must name a program".into());
                }
                self.no_signal_target()?;
                Ok(Action::Command {
                    argv: argv.clone(),
                    timeout,
                })
            }
            (None, None, Some(url)) => {
                let uri: hyper::Uri = url
                    .parse()
                    .map_err(|_| format!("post {url:?} is not a URL"))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(format!(
                        "post {url:?} must be an http:// URL (the app is in the same pod)"
                    ));
                }
                self.no_signal_target()?;
                Ok(Action::Post { url: uri, timeout })
            }
            _ => Err("give exactly one of signal, command or post".into()),
        }
    }

    fn no_signal_target(&self) -> Result<(), String> {
        if self.pid_file.is_some() || self.process_name.is_some() {
            return Err("pidFile and processName go with signal".into());
        }
        Ok(())
    }
}

impl Action {
    /// Runs the action once for `changed` files.
    pub async fn run(&self, changed: &BTreeSet<FileName>) -> Result<(), ActionError> {
        match self {
            Self::Signal { signal, target } => {
                for pid in target.pids()? {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), *signal)
                        .map_err(|source| ActionError::Kill { pid, source })?;
                }
                Ok(())
            }
            Self::Command { argv, timeout } => {
                let names: Vec<&str> = changed.iter().map(FileName::as_str).collect();
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .env("COFFER_CHANGED_FILES", names.join("\n"))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(ActionError::Spawn)?;
                let status = tokio::time::timeout(*timeout, child.wait())
                    .await
                    .map_err(|_| ActionError::Timeout(*timeout))?
                    .map_err(ActionError::Spawn)?;
                if status.success() {
                    Ok(())
                } else {
                    Err(ActionError::Exit(status))
                }
            }
            Self::Post { url, timeout } => {
                let names: Vec<&str> = changed.iter().map(FileName::as_str).collect();
                let body = serde_json::json!({ "files": names }).to_string();
                tokio::time::timeout(*timeout, post(url, body))
                    .await
                    .map_err(|_| ActionError::Timeout(*timeout))?
            }
        }
    }
}

impl Target {
    fn pids(&self) -> Result<Vec<i32>, ActionError> {
        match self {
            Self::PidFile(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ActionError::PidFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                match text.trim().parse::<i32>() {
                    Ok(pid) if pid > 1 => Ok(vec![pid]),
                    _ => Err(ActionError::BadPid(path.display().to_string())),
                }
            }
            Self::Name(name) => {
                let pids = processes_named(name);
                if pids.is_empty() {
                    Err(ActionError::NoProcess(name.clone()))
                } else {
                    Ok(pids)
                }
            }
        }
    }
}

/// Scans /proc for processes called `name`, other than this one. With
/// `shareProcessNamespace: true` this sees every container of the pod.
pub fn processes_named(name: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own && *pid > 1)
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end_matches('\n') == name {
                return true;
            }
            // comm is cut at 15 bytes; argv[0] holds the whole name.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            base == name.as_bytes()
        })
        .collect()
}

async fn post(url: &hyper::Uri, body: String) -> Result<(), ActionError> {
    use http_body_util::{BodyExt, Full};
    let http = |e: &dyn std::fmt::Display| ActionError::Http(e.to_string());
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| http(&e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    let connection = tokio::spawn(connection);
    let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status();
    // Drain the answer so the server sees a clean close.
    let _ = response.into_body().collect().await;
    connection.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(ActionError::Status(status))
    }
}

/// The running action tasks.
#[derive(Debug, Default)]
pub struct Actions {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    /// `None`: the global action, woken by any change.
    file: Option<FileName>,
    pending: Arc<Mutex<BTreeSet<FileName>>>,
    wake: Arc<Notify>,
}

impl Actions {
    /// Spawns one task per action on the current runtime. `actions` pairs
    /// each action with its file, or `None` for the global one.
    pub fn spawn(actions: Vec<(Option<FileName>, Action)>, retry_base: Duration) -> Self {
        let workers = actions
            .into_iter()
            .map(|(file, action)| {
                let worker = Worker {
                    file,
                    pending: Arc::default(),
                    wake: Arc::default(),
                };
                let name = worker
                    .file
                    .as_ref()
                    .map_or_else(|| "(global)".to_string(), |f| f.as_str().to_string());
                tokio::spawn(work(
                    name,
                    action,
                    worker.pending.clone(),
                    worker.wake.clone(),
                    retry_base,
                ));
                worker
            })
            .collect();
        Self { workers }
    }

    /// Records that `changed` files were written and wakes their actions.
    /// Never waits.
    pub fn notify(&self, changed: &[FileName]) {
        if changed.is_empty() {
            return;
        }
        for worker in &self.workers {
            let relevant: Vec<&FileName> = match &worker.file {
                None => changed.iter().collect(),
                Some(file) => changed.iter().filter(|c| *c == file).collect(),
            };
            if relevant.is_empty() {
                continue;
            }
            let mut pending = worker.pending.lock();
            pending.extend(relevant.into_iter().cloned());
            drop(pending);
            worker.wake.notify_one();
        }
    }
}

fn take(pending: &Mutex<BTreeSet<FileName>>) -> BTreeSet<FileName> {
    std::mem::take(&mut *pending.lock())
}

async fn work(
    name: String,
    action: Action,
    pending: Arc<Mutex<BTreeSet<FileName>>>,
    wake: Arc<Notify>,
    retry_base: Duration,
) {
    loop {
        wake.notified().await;
        let mut files = take(&pending);
        // A wake-up whose change an earlier attempt already covered.
        if files.is_empty() {
            continue;
        }
        let mut backoff = Backoff::new(retry_base, retry_base * 64);
        for attempt in 1..=MAX_ATTEMPTS {
            files.extend(take(&pending));
            match action.run(&files).await {
                Ok(()) => {
                    tracing::info!(file = %name, attempt, "action done");
                    break;
                }
                Err(error) if attempt == MAX_ATTEMPTS => {
                    tracing::error!(file = %name, attempt, error = %error, "action failed; giving up until the next change");
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(file = %name, attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "action failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ActionSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn signals_parse_with_or_without_prefix() {
        for name in ["HUP", "SIGHUP", "hup"] {
            let action = spec(&format!("{{signal: {name}, pidFile: /p}}"))
                .validate()
                .unwrap();
            assert_eq!(
                action,
                Action::Signal {
                    signal: Signal::SIGHUP,
                    target: Target::PidFile("/p".into())
                }
            );
        }
        assert!(spec("{signal: NOPE, pidFile: /p}").validate().is_err());
    }

    #[test]
    fn exactly_one_action_and_target() {
        assert!(spec("{signal: HUP}").validate().is_err());
        assert!(
            spec("{signal: HUP, pidFile: /p, processName: x}")
                .validate()
                .is_err()
        );
        assert!(
            spec("{command: [a], post: \"http://x/\"}")
                .validate()
                .is_err()
        );
        assert!(spec("{command: []}").validate().is_err());
        assert!(spec("{command: [a], pidFile: /p}").validate().is_err());
        assert!(spec("{post: \"https://x/\"}").validate().is_err());
        assert!(spec("{post: \"http://127.0.0.1:1/r\"}").validate().is_ok());
        assert!(spec("{}").validate().is_err());
    }

    #[test]
    fn finds_a_process_by_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Between fork and exec the child still carries this test's name:
        // wait until it is `sleep` before scanning.
        let comm = format!("/proc/{}/comm", child.id());
        for _ in 0..500 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = processes_named("sleep");
        let _ = child.kill();
        let _ = child.wait();
        assert!(pids.contains(&(child.id() as i32)), "{pids:?}");
        assert!(processes_named("no-such-process-name-xyz").is_empty());
    }

    #[tokio::test]
    async fn a_failing_command_is_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Fails twice, then succeeds; each run appends a line.
        let script = format!("echo x >> {0}; test $(wc -l < {0}) -ge 3", count.display());
        let action = Action::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            timeout: Duration::from_secs(5),
        };
        let file = FileName::try_from("a".to_string()).unwrap();
        let actions = Actions::spawn(
            vec![(Some(file.clone()), action)],
            Duration::from_millis(10),
        );
        actions.notify(std::slice::from_ref(&file));
        let mut lines = 0;
        for _ in 0..500 {
            lines = std::fs::read_to_string(&count)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            if lines >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Succeeded on the third run and then stopped.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(lines, 3);
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    }

    #[tokio::test]
    async fn other_files_do_not_wake_a_per_file_action() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let action = Action::Command {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo x >> {}", count.display()),
            ],
            timeout: Duration::from_secs(5),
        };
        let a = FileName::try_from("a".to_string()).unwrap();
        let b = FileName::try_from("b".to_string()).unwrap();
        let actions = Actions::spawn(vec![(Some(a), action)], Duration::from_millis(10));
        actions.notify(&[b]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!count.exists());
    }
}
