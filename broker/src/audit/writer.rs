//! The writer: one thread owns the sink and the chain's head, fed by a
//! channel; each caller awaits its own record's outcome, so async workers
//! never block on the disk and a request still fails closed when its record
//! is not written. Authentication failures are aggregated here.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::oneshot;
use zeroize::Zeroizing;

use super::{
    chain::{GENESIS, Link, Record},
    error::AuditError,
    event::{AuditEvent, Entry},
    file::RotatingFile,
};

/// The most (peer, RPC, reason) windows aggregated at once; further peers
/// share one window per (RPC, reason) with peer `*`.
const MAX_WINDOWS: usize = 4096;

/// The default interval over which authentication failures are aggregated.
pub const DEFAULT_AGGREGATE_INTERVAL: Duration = Duration::from_secs(10);
/// The default number of rotated files kept.
pub const DEFAULT_KEEP: usize = 10;
/// The default interval between logs of the chain head.
pub const DEFAULT_HEAD_INTERVAL: Duration = Duration::from_secs(60);

/// Where records go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    /// Standard output; each process start begins a new chain.
    Stdout,
    /// A file (mode 0600), rotated by size; the chain continues across
    /// rotations and restarts.
    File(PathBuf),
}

/// How the audit trail is kept.
pub struct AuditOptions {
    /// Where records go.
    pub sink: AuditSink,
    /// Rotate once a file would exceed this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted (0: keep all).
    pub keep: usize,
    /// Link records with HMAC-SHA256 under this key instead of SHA-256.
    pub hmac_key: Option<Zeroizing<Vec<u8>>>,
    /// Authentication failures from one peer, RPC and reason within this
    /// interval are counted into one record (zero: one record each).
    pub aggregate_interval: Duration,
    /// Log the chain head (seq and hash) at info this often (`None`: never).
    pub head_interval: Option<Duration>,
}

impl AuditOptions {
    /// Defaults for `sink`: no rotation, every rotated file kept, no key,
    /// failures aggregated over [`DEFAULT_AGGREGATE_INTERVAL`], no head logs.
    pub fn new(sink: AuditSink) -> Self {
        Self {
            sink,
            max_bytes: 0,
            keep: 0,
            hmac_key: None,
            aggregate_interval: DEFAULT_AGGREGATE_INTERVAL,
            head_interval: None,
        }
    }
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

/// What a caller asks of the writer thread.
enum Message {
    Record {
        entry: Entry,
        reply: oneshot::Sender<Result<(), AuditError>>,
    },
    AuthFailure {
        entry: Entry,
        reply: oneshot::Sender<Result<(), AuditError>>,
    },
    Head {
        reply: oneshot::Sender<(u64, String)>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
}

/// The audit trail. Writes are serialized on one thread: the chain is one
/// sequence.
pub struct AuditLog {
    // Unbounded, yet bounded in practice: every sender awaits its reply, so
    // the queue holds at most one message per request in flight.
    tx: Option<mpsc::Sender<Message>>,
    thread: Option<JoinHandle<()>>,
    fail_open: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Records to standard output; each process start begins a new chain.
    pub fn stdout() -> Result<Self, AuditError> {
        Self::open(AuditOptions::new(AuditSink::Stdout))
    }

    /// Records to `path` (mode 0600), rotating once a file would exceed
    /// `max_bytes` (0: never). Continues the chain found on disk.
    pub fn file(path: &Path, max_bytes: u64) -> Result<Self, AuditError> {
        Self::open(AuditOptions {
            max_bytes,
            ..AuditOptions::new(AuditSink::File(path.to_path_buf()))
        })
    }

    /// Opens the trail as `options` say and starts its writer thread.
    pub fn open(options: AuditOptions) -> Result<Self, AuditError> {
        let link = Link::new(options.hmac_key.as_deref().map(Vec::as_slice));
        let (sink, seq, prev) = match &options.sink {
            AuditSink::Stdout => (Sink::Stdout, 0, GENESIS.to_string()),
            AuditSink::File(path) => {
                let (file, seq, prev) =
                    RotatingFile::open(path, options.max_bytes, options.keep, &link)?;
                (Sink::File(file), seq, prev)
            }
        };
        let writer = Writer {
            sink,
            seq,
            prev,
            link,
            windows: HashMap::new(),
            aggregate_interval: options.aggregate_interval,
            head_interval: options.head_interval,
            head_logged: Instant::now(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("coffer-audit".into())
            .spawn(move || writer.run(&rx))
            .map_err(|source| AuditError::Io {
                path: "writer thread".into(),
                source,
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            fail_open: false,
        })
    }

    /// When the sink cannot be written, let requests proceed anyway (logged).
    /// The default is to refuse them.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Whether requests proceed when the sink cannot be written.
    pub fn is_fail_open(&self) -> bool {
        self.fail_open
    }

    /// Appends one record. An error means the record is not on disk and the
    /// chain did not advance.
    pub async fn record(&self, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Record {
            entry: event.into(),
            reply,
        })?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records a failed authentication: the first per peer IP, RPC and
    /// reason in an interval at once, the rest counted into one record at
    /// the interval's end. An error means this call's record was due and is
    /// not on disk.
    pub async fn record_auth_failure(&self, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::AuthFailure {
            entry: event.into(),
            reply,
        })?;
        rx.await.map_err(|_| AuditError::Stopped)?
    }

    /// The `seq` the next record will have and the hash it will name as
    /// `prev`.
    pub async fn head(&self) -> Result<(u64, String), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Head { reply })?;
        rx.await.map_err(|_| AuditError::Stopped)
    }

    /// Writes the pending counts of aggregated authentication failures now
    /// and logs the chain head; for shutdown.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.send(Message::Flush { reply })?;
        rx.await.map_err(|_| AuditError::Stopped)
    }

    fn send(&self, message: Message) -> Result<(), AuditError> {
        self.tx
            .as_ref()
            .ok_or(AuditError::Stopped)?
            .send(message)
            .map_err(|_| AuditError::Stopped)
    }
}

impl Drop for AuditLog {
    /// Flushes pending aggregated failures and waits for the last write.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the audit writer thread panicked");
        }
    }
}

/// Failures counted since the interval's first one was written.
struct Window {
    started: Instant,
    pending: u64,
    /// The first of the counted failures, as the summary record names it.
    template: Option<Entry>,
}

/// The writer thread's state: the sink and the chain's head.
struct Writer {
    sink: Sink,
    seq: u64,
    prev: String,
    link: Link,
    windows: HashMap<(String, String, String), Window>,
    aggregate_interval: Duration,
    head_interval: Option<Duration>,
    head_logged: Instant,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Message>) {
        // Wake often enough to end aggregation intervals and log the head
        // roughly on time, and no more often than needed.
        let tick = [Some(self.aggregate_interval), self.head_interval]
            .into_iter()
            .flatten()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        // The head at opening anchors the trail: `cofferctl audit verify
        // --anchor NEXT_SEQ:LAST_HASH` then reports records cut off its start.
        self.log_head();
        loop {
            match rx.recv_timeout(tick) {
                Ok(Message::Record { entry, reply }) => {
                    let _ = reply.send(self.append(&entry, None));
                }
                Ok(Message::AuthFailure { entry, reply }) => {
                    let _ = reply.send(self.auth_failure(entry));
                }
                Ok(Message::Head { reply }) => {
                    let _ = reply.send((self.seq, self.prev.clone()));
                }
                Ok(Message::Flush { reply }) => {
                    self.flush_windows(true);
                    self.log_head();
                    let _ = reply.send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.flush_windows(true);
                    self.log_head();
                    return;
                }
            }
            self.flush_windows(false);
            if let Some(every) = self.head_interval
                && self.head_logged.elapsed() >= every
            {
                self.log_head();
            }
        }
    }

    fn log_head(&mut self) {
        self.head_logged = Instant::now();
        // The hash names the last record written; compare it with the file's
        // tail to detect records cut off the end.
        tracing::info!(
            target: "coffer::audit",
            next_seq = self.seq,
            last_hash = %self.prev,
            anchor = %format_args!("{}:{}", self.seq, self.prev),
            "audit chain head"
        );
    }

    fn auth_failure(&mut self, entry: Entry) -> Result<(), AuditError> {
        if self.aggregate_interval.is_zero() {
            return self.append(&entry, Some(1));
        }
        let ip = entry.peer.as_deref().map_or_else(String::new, |p| {
            p.parse::<std::net::SocketAddr>()
                .map_or_else(|_| p.to_string(), |a| a.ip().to_string())
        });
        let mut key = (ip, entry.rpc.clone(), entry.reason.clone());
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_WINDOWS {
            key.0 = "*".into();
        }
        if let Some(window) = self.windows.get_mut(&key)
            && window.started.elapsed() < self.aggregate_interval
        {
            window.pending += 1;
            if window.template.is_none() {
                let mut template = entry;
                template.peer = Some(key.0.clone());
                window.template = Some(template);
            }
            return Ok(());
        }
        if let Some(window) = self.windows.remove(&key) {
            self.flush(window);
        }
        let result = self.append(&entry, Some(1));
        self.windows.insert(
            key,
            Window {
                started: Instant::now(),
                pending: 0,
                template: None,
            },
        );
        result
    }

    /// Writes the counts of windows whose interval is over (all: `all`).
    fn flush_windows(&mut self, all: bool) {
        if self.windows.is_empty() {
            return;
        }
        let interval = self.aggregate_interval;
        let done: Vec<_> = self
            .windows
            .iter()
            .filter(|(_, w)| all || w.started.elapsed() >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(window) = self.windows.remove(&key) {
                self.flush(window);
            }
        }
    }

    fn flush(&mut self, window: Window) {
        let Some(template) = window.template else {
            return;
        };
        if let Err(error) = self.append(&template, Some(window.pending)) {
            tracing::error!(%error, count = window.pending, "aggregated authentication failures not recorded");
        }
    }

    fn append(&mut self, entry: &Entry, count: Option<u64>) -> Result<(), AuditError> {
        let record = Record {
            seq: self.seq,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            entry,
            count,
            chain: self.link.name(),
            prev: &self.prev,
        };
        let line = serde_json::to_string(&record)?;
        let hash = self.link.hash(line.as_bytes());
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        let written = match &mut self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .map_err(|source| AuditError::Io {
                        path: "stdout".into(),
                        source,
                    })
            }
            Sink::File(file) => file.write(&bytes),
        };
        if written.is_err() {
            crate::metrics::audit_write_failure();
        }
        written?;
        self.seq += 1;
        self.prev = hash;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, io::Read};

    use super::*;
    use crate::audit::{
        Outcome,
        fixtures::{event, read},
        verify,
    };

    #[tokio::test]
    async fn records_chain_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        for i in 0..5 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let bytes = read(&path);
        let summary = verify([("audit.log", bytes.as_slice())]).unwrap();
        assert_eq!((summary.records, summary.first_seq), (5, Some(0)));
        assert_eq!(log.head().await.unwrap(), (5, summary.last_hash));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn repeated_auth_failures_are_counted_into_one_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditOptions {
            aggregate_interval: Duration::from_secs(3600),
            ..AuditOptions::new(AuditSink::File(path.clone()))
        })
        .unwrap();
        let mut failure = event("f");
        failure.decision = Outcome::Deny;
        failure.reason = "bad_signature";
        for port in 0..100 {
            let peer = format!("10.0.0.1:{port}");
            let mut from = failure.clone();
            from.peer = Some(&peer);
            log.record_auth_failure(&from).await.unwrap();
        }
        failure.peer = Some("10.0.0.2:5");
        log.record_auth_failure(&failure).await.unwrap();
        // The pending count is written when the interval ends (here: at close).
        drop(log);
        let text = String::from_utf8(read(&path)).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 3, "{text}");
        let counts: Vec<_> = records
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 101);
        assert!(
            records
                .iter()
                .any(|r| r["count"] == 99 && r["peer"] == "10.0.0.1")
        );
        verify([("a", text.as_bytes())]).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stalled_sink_does_not_stall_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        // A reader that opens the pipe but reads only when told: once the
        // pipe's buffer is full, every write blocks.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                let mut pipe = File::open(&fifo).unwrap();
                wait.recv().unwrap();
                let mut all = String::new();
                pipe.read_to_string(&mut all).unwrap();
                all.lines().count()
            }
        });
        let log = std::sync::Arc::new(AuditLog::file(&fifo, 0).unwrap());
        let writes = tokio::spawn({
            let log = log.clone();
            async move {
                for i in 0..1000 {
                    log.record(&event(&format!("r{i}"))).await.unwrap();
                }
            }
        });
        // ~300 KB of records against a 64 KiB pipe: the writer is stuck, yet
        // this single-threaded runtime still runs timers and tasks.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!writes.is_finished(), "the pipe never filled up");
        go.send(()).unwrap();
        writes.await.unwrap();
        drop(log);
        assert_eq!(reader.join().unwrap(), 1000);
    }

    #[tokio::test]
    async fn an_unwritable_sink_reports_an_error_and_the_chain_holds() {
        let log = AuditLog::file(Path::new("/dev/full"), 0).unwrap();
        assert!(log.record(&event("r")).await.is_err());
        assert_eq!(log.head().await.unwrap(), (0, GENESIS.to_string()));
    }
}
