//! The audit trail: one JSON line per decision, hash-chained.
//!
//! Each record names who asked (identity, peer, request id), what for (RPC,
//! path, capability), the decision with its reason and rule, and for reads
//! the version served. It never holds a secret value or a token: the
//! [`AuditEvent`] type has no field that could carry one.
//!
//! Every record carries `prev`, the hex SHA-256 of the previous record's line
//! (without its newline), and `seq`, one more than the previous record's. The
//! first record of a chain has `seq` 0 and `prev` [`GENESIS`]. Editing or
//! deleting a record breaks the chain at the next record; [`verify`] finds
//! it. With an HMAC key ([`AuditOptions::hmac_key`]) the link is
//! HMAC-SHA256 keyed by it instead, and every record says
//! `"chain":"hmac-sha256"`: whoever can write the file but not read the key
//! cannot forge a chain that [`verify_keyed`] accepts.
//!
//! A file sink rotates by size (`FILE` → `FILE.000001`, ...), keeps at most
//! [`AuditOptions::keep`] rotated files, and the chain continues across
//! files; on restart it continues from the last record on disk. A write that
//! fails half-way (a full disk) is cut back to the last whole record, so the
//! chain goes on once space is freed.
//!
//! All file I/O happens on one writer thread fed by a channel; each caller
//! awaits its own record's outcome, so the async workers never block on the
//! disk and a request still fails closed when its record is not written.
//! Authentication failures are aggregated there: per (peer IP, RPC, reason)
//! the first failure of an interval is written at once and the rest are
//! counted into one record at the end of the interval (`count`).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use ring::{
    digest::{SHA256, digest},
    hmac,
};
use serde::Serialize;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::{auth::WorkloadIdentity, policy::Capability, store::LeaseOwner};

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `chain` field of records linked by HMAC-SHA256.
pub const HMAC_CHAIN: &str = "hmac-sha256";

/// How far back from the end of a file the last record is looked for.
const TAIL_BYTES: u64 = 64 * 1024;

/// The most (peer, RPC, reason) windows aggregated at once; further peers
/// share one window per (RPC, reason) with peer `*`.
const MAX_WINDOWS: usize = 4096;

/// The default interval over which authentication failures are aggregated.
pub const DEFAULT_AGGREGATE_INTERVAL: Duration = Duration::from_secs(10);
/// The default number of rotated files kept.
pub const DEFAULT_KEEP: usize = 10;
/// The default interval between logs of the chain head.
pub const DEFAULT_HEAD_INTERVAL: Duration = Duration::from_secs(60);

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

/// One decision, as the broker describes it. Borrowed, and free of values
/// and tokens by construction.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub request_id: &'a str,
    pub peer: Option<&'a str>,
    pub identity: Option<&'a WorkloadIdentity>,
    pub rpc: &'a str,
    pub path: Option<&'a str>,
    pub capability: Option<Capability>,
    pub version: Option<u64>,
    pub decision: Outcome,
    pub reason: &'a str,
    pub rule: Option<&'a str>,
    /// The Vault lease of the credential served or acted on (never the
    /// credential).
    pub lease_id: Option<&'a str>,
    /// Who acted when not the caller: `broker` for its own lease actions.
    pub actor: Option<&'a str>,
    /// The workload a lease belongs to, in the broker's own lease records.
    pub owner: Option<&'a LeaseOwner>,
}

#[derive(Serialize, Clone)]
struct Identity {
    issuer: String,
    namespace: String,
    service_account: String,
    pod: Option<String>,
}

impl From<&LeaseOwner> for Identity {
    fn from(owner: &LeaseOwner) -> Self {
        Self {
            issuer: owner.issuer.clone(),
            namespace: owner.namespace.clone(),
            service_account: owner.service_account.clone(),
            pod: owner.pod_name.clone().or_else(|| owner.pod_uid.clone()),
        }
    }
}

/// An event copied out of the request, ready to cross to the writer thread.
#[derive(Serialize, Clone)]
struct Entry {
    request_id: String,
    peer: Option<String>,
    identity: Option<Identity>,
    rpc: String,
    path: Option<String>,
    capability: Option<&'static str>,
    version: Option<u64>,
    decision: Outcome,
    reason: String,
    rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<Identity>,
}

impl From<&AuditEvent<'_>> for Entry {
    fn from(event: &AuditEvent<'_>) -> Self {
        Self {
            request_id: event.request_id.to_string(),
            peer: event.peer.map(str::to_string),
            identity: event.identity.map(|w| Identity {
                issuer: w.issuer.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                pod: w.pod_name.clone(),
            }),
            rpc: event.rpc.to_string(),
            path: event.path.map(str::to_string),
            capability: event.capability.map(Capability::as_str),
            version: event.version,
            decision: event.decision,
            reason: event.reason.to_string(),
            rule: event.rule.map(str::to_string),
            lease_id: event.lease_id.map(str::to_string),
            actor: event.actor.map(str::to_string),
            owner: event.owner.map(Identity::from),
        }
    }
}

#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    #[serde(flatten)]
    entry: &'a Entry,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<&'static str>,
    prev: &'a str,
}

/// Why the audit trail could not be opened or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("audit file {0} does not end with a complete record: move it aside")]
    Damaged(String),
    #[error(
        "audit file {file} was written {} an HMAC key: keep the same setting or move the trail aside",
        if *.keyed { "with" } else { "without" }
    )]
    ChainMismatch { file: String, keyed: bool },
    #[error("cannot encode audit record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the audit writer has stopped")]
    Stopped,
}

/// How the chain links one record to the next.
enum Link {
    Sha256,
    Hmac(hmac::Key),
}

impl Link {
    fn new(key: Option<&[u8]>) -> Self {
        key.map_or(Self::Sha256, |k| {
            Self::Hmac(hmac::Key::new(hmac::HMAC_SHA256, k))
        })
    }

    fn hash(&self, line: &[u8]) -> String {
        match self {
            Self::Sha256 => hex(digest(&SHA256, line).as_ref()),
            Self::Hmac(key) => hex(hmac::sign(key, line).as_ref()),
        }
    }

    fn name(&self) -> Option<&'static str> {
        match self {
            Self::Sha256 => None,
            Self::Hmac(_) => Some(HMAC_CHAIN),
        }
    }
}

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

struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
    next_index: u64,
}

impl RotatingFile {
    fn open(
        path: &Path,
        max_bytes: u64,
        keep: usize,
        link: &Link,
    ) -> Result<(Self, u64, String), AuditError> {
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        let rotated = rotated_files(path).map_err(io)?;
        let next_index = rotated.last().map_or(1, |(i, _)| i + 1);
        // The chain continues from the live file, or else from the newest
        // rotated one.
        let mut resume = (0, GENESIS.to_string());
        let live_len = std::fs::metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.len());
        let source = if live_len > 0 {
            Some(path.to_path_buf())
        } else {
            rotated.last().map(|(_, p)| p.clone())
        };
        if let Some(source) = source
            && let Some(last) = last_record(&source, link)?
        {
            resume = last;
        }
        let file = open_append(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
                size,
                max_bytes,
                keep,
                next_index,
            },
            resume.0,
            resume.1,
        ))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        let io = |path: &Path, source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if self.max_bytes > 0 && self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            let target = rotated_name(&self.path, self.next_index);
            std::fs::rename(&self.path, &target).map_err(|e| io(&self.path, e))?;
            self.next_index += 1;
            self.file = open_append(&self.path).map_err(|e| io(&self.path, e))?;
            self.size = 0;
            self.prune();
        }
        if let Err(error) = self.file.write_all(bytes) {
            self.cut_back();
            return Err(io(&self.path, error));
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Removes a partly written record (e.g. the disk filled up mid-write),
    /// so the file again ends with a whole record and the chain can go on.
    fn cut_back(&mut self) {
        let Ok(meta) = self.file.metadata() else {
            return;
        };
        if meta.is_file()
            && meta.len() > self.size
            && let Err(error) = self.file.set_len(self.size)
        {
            tracing::error!(path = %self.path.display(), %error,
                "cannot cut a partial audit record off the end: move the file aside");
        }
    }

    /// Deletes the oldest rotated files beyond `keep`.
    fn prune(&self) {
        if self.keep == 0 {
            return;
        }
        let rotated = match rotated_files(&self.path) {
            Ok(rotated) => rotated,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot list rotated audit files");
                return;
            }
        };
        let excess = rotated.len().saturating_sub(self.keep);
        for (_, old) in rotated.into_iter().take(excess) {
            match std::fs::remove_file(&old) {
                Ok(()) => {
                    tracing::info!(path = %old.display(), "oldest rotated audit file deleted")
                }
                Err(error) => {
                    tracing::warn!(path = %old.display(), %error, "cannot delete a rotated audit file");
                }
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

fn rotated_name(path: &Path, index: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index:06}"));
    PathBuf::from(name)
}

/// `FILE.NNNNNN` siblings of `path`, oldest first.
fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(base))
            .and_then(|n| n.strip_prefix('.'))
            .filter(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((index, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// The `seq + 1` and link hash of the last record of a regular file, if
/// any. A record linked otherwise than `link` is refused.
fn last_record(path: &Path, link: &Link) -> Result<Option<(u64, String)>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    // Devices (e.g. /dev/full in tests) and empty files hold no chain.
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let start = meta.len().saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(io)?;
    let damaged = || AuditError::Damaged(path.display().to_string());
    let body = tail.strip_suffix(b"\n").ok_or_else(damaged)?;
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => return Err(damaged()),
    };
    let value = serde_json::from_slice::<serde_json::Value>(line).map_err(|_| damaged())?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(damaged)?;
    let keyed = value.get("chain").and_then(serde_json::Value::as_str) == Some(HMAC_CHAIN);
    if keyed != link.name().is_some() {
        return Err(AuditError::ChainMismatch {
            file: path.display().to_string(),
            keyed,
        });
    }
    Ok(Some((seq + 1, link.hash(line))))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct BrokenChain {
    /// The file holding the first broken record.
    pub file: String,
    /// Its line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// What an intact chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Records checked.
    pub records: u64,
    /// The `seq` of the first record.
    pub first_seq: Option<u64>,
    /// The hash of the last record: compare with a copy kept elsewhere to
    /// detect truncation at the end.
    pub last_hash: String,
    /// Whether an [`Anchor`] was given and the chain passed through it.
    pub anchored: bool,
}

impl ChainSummary {
    /// The anchor for the next check of the same trail: the seq the next
    /// record will have and the hash it will name.
    pub fn next_anchor(&self) -> Anchor {
        Anchor {
            next_seq: self.first_seq.map_or(0, |first| first + self.records),
            last_hash: self.last_hash.clone(),
        }
    }
}

/// A point of the chain known from outside the files, so that records cut
/// off the start (or the end) of a trail are found: the `audit chain head`
/// the broker logs when it opens the trail, every `head_interval` and at
/// shutdown (`next_seq`, `last_hash`), or the anchor a previous
/// `cofferctl audit verify` printed. Written `NEXT_SEQ:LAST_HASH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The seq of the record written after the anchor point.
    pub next_seq: u64,
    /// The hash that record names as `prev`.
    pub last_hash: String,
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not NEXT_SEQ:LAST_HASH"))?;
        let next_seq = seq
            .parse()
            .map_err(|_| format!("{seq:?} is not a record number"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{hash:?} is not a 64-digit hex hash"));
        }
        Ok(Self {
            next_seq,
            last_hash: hash.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.next_seq, self.last_hash)
    }
}

/// Checks a SHA-256 chain given as `(file name, contents)` in order (oldest
/// first); see [`verify_keyed`].
pub fn verify<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ChainSummary, BrokenChain> {
    verify_keyed(files, None)
}

/// [`verify_keyed`], then the chain must pass through `anchor`: no record
/// from the anchor on may be missing, at the start or at the end. Without
/// an anchor, a trail with its first records cut verifies from its first
/// remaining record (it cannot be told from one whose oldest files were
/// pruned).
pub fn verify_anchored<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    hmac_key: Option<&[u8]>,
    anchor: &Anchor,
) -> Result<ChainSummary, BrokenChain> {
    let files: Vec<(&str, &[u8])> = files.into_iter().collect();
    let mut summary = verify_keyed(files.iter().copied(), hmac_key)?;
    let first_name = files.first().map_or("", |(name, _)| *name);
    let last_name = files.last().map_or("", |(name, _)| *name);
    let cut = |file: &str, problem: String| BrokenChain {
        file: file.to_string(),
        line: 1,
        problem,
    };
    let Some(first) = summary.first_seq else {
        return Err(cut(
            first_name,
            format!(
                "no records, but the anchor names seq {}: the trail was emptied",
                anchor.next_seq
            ),
        ));
    };
    let next = first + summary.records;
    if first > anchor.next_seq {
        return Err(cut(
            first_name,
            format!(
                "the trail starts at seq {first}, after the anchor's seq {}: records {}..{} were cut",
                anchor.next_seq,
                anchor.next_seq,
                first - 1
            ),
        ));
    }
    if next < anchor.next_seq {
        return Err(cut(
            last_name,
            format!(
                "the trail ends at seq {}, before the anchor's seq {}: records were cut off its end",
                next - 1,
                anchor.next_seq
            ),
        ));
    }
    // The record at the anchor must name the anchor's hash (or, when the
    // anchor is the end, the last record must hash to it).
    let at_anchor = if next == anchor.next_seq {
        summary.last_hash.clone()
    } else {
        prev_of(&files, anchor.next_seq).unwrap_or_default()
    };
    if at_anchor != anchor.last_hash {
        return Err(cut(
            first_name,
            format!(
                "the chain does not pass through the anchor {anchor}: these records are not the ones it was taken from"
            ),
        ));
    }
    summary.anchored = true;
    Ok(summary)
}

/// The `prev` of the record with `seq` in `files` (already verified).
fn prev_of(files: &[(&str, &[u8])], seq: u64) -> Option<String> {
    files
        .iter()
        .flat_map(|(_, contents)| contents.split(|&b| b == b'\n'))
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find(|value| value.get("seq").and_then(serde_json::Value::as_u64) == Some(seq))
        .and_then(|value| value.get("prev")?.as_str().map(str::to_string))
}

/// Checks a chain given as `(file name, contents)` in order (oldest first),
/// linked by HMAC-SHA256 under `hmac_key` when given, else by SHA-256; a
/// record linked the other way is refused. A chain may start mid-way (older
/// files rotated away and pruned): its first record is then trusted as the
/// anchor, unless its `seq` is 0, which must follow [`GENESIS`].
pub fn verify_keyed<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    hmac_key: Option<&[u8]>,
) -> Result<ChainSummary, BrokenChain> {
    let link = Link::new(hmac_key);
    let mut prev: Option<(String, u64, String, usize)> = None; // hash, seq, file, line
    let mut summary = ChainSummary {
        records: 0,
        first_seq: None,
        last_hash: GENESIS.to_string(),
        anchored: false,
    };
    for (name, contents) in files {
        let broken = |line: usize, problem: String| BrokenChain {
            file: name.to_string(),
            line,
            problem,
        };
        if contents.is_empty() {
            continue;
        }
        let Some(body) = contents.strip_suffix(b"\n") else {
            let line = contents.split(|&b| b == b'\n').count();
            return Err(broken(
                line,
                "the last record is incomplete (no newline)".into(),
            ));
        };
        for (index, line) in body.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let value: serde_json::Value = serde_json::from_slice(line)
                .map_err(|_| broken(number, "not a JSON audit record".into()))?;
            let (Some(seq), Some(claimed)) = (
                value.get("seq").and_then(serde_json::Value::as_u64),
                value.get("prev").and_then(serde_json::Value::as_str),
            ) else {
                return Err(broken(number, "record lacks seq or prev".into()));
            };
            let keyed = value.get("chain").and_then(serde_json::Value::as_str) == Some(HMAC_CHAIN);
            match (keyed, hmac_key.is_some()) {
                (true, false) => {
                    return Err(broken(
                        number,
                        "the record is linked by HMAC-SHA256: verify with the key \
                         (--hmac-key-file)"
                            .into(),
                    ));
                }
                (false, true) => {
                    return Err(broken(
                        number,
                        "the record is not HMAC-linked although a key was given".into(),
                    ));
                }
                _ => {}
            }
            match &prev {
                None => {
                    if seq == 0 && claimed != GENESIS {
                        return Err(broken(
                            number,
                            "the first record (seq 0) does not start from the genesis hash".into(),
                        ));
                    }
                    summary.first_seq = Some(seq);
                }
                Some((hash, prev_seq, prev_file, prev_line)) => {
                    if seq != prev_seq + 1 {
                        return Err(broken(
                            number,
                            format!(
                                "seq {seq} follows seq {prev_seq} ({prev_file}:{prev_line}): \
                                 records were deleted or reordered"
                            ),
                        ));
                    }
                    if claimed != hash {
                        let or_key = if hmac_key.is_some() {
                            " (or the HMAC key is not the one it was written with)"
                        } else {
                            ""
                        };
                        return Err(BrokenChain {
                            file: prev_file.clone(),
                            line: *prev_line,
                            problem: format!(
                                "record seq {prev_seq} was modified: it does not hash to the \
                                 prev of the record after it ({name}:{number}){or_key}"
                            ),
                        });
                    }
                }
            }
            let hash = link.hash(line);
            summary.records += 1;
            summary.last_hash.clone_from(&hash);
            prev = Some((hash, seq, name.to_string(), number));
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rid: &str) -> AuditEvent<'_> {
        AuditEvent {
            request_id: rid,
            peer: Some("127.0.0.1:1"),
            identity: None,
            rpc: "GetSecret",
            path: Some("app/db"),
            capability: Some(Capability::Read),
            version: Some(3),
            decision: Outcome::Allow,
            reason: "allowed",
            rule: Some("r"),
            lease_id: None,
            actor: None,
            owner: None,
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    /// The rotated files then the live one, as `cofferctl audit verify` takes them.
    fn trail(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = rotated_files(path)
            .unwrap()
            .into_iter()
            .map(|(_, p)| (p.display().to_string(), read(&p)))
            .collect();
        files.push((path.display().to_string(), read(path)));
        files
    }

    fn verify_trail(
        files: &[(String, Vec<u8>)],
        key: Option<&[u8]>,
    ) -> Result<ChainSummary, BrokenChain> {
        verify_keyed(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())), key)
    }

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
    async fn an_edit_and_a_deletion_are_each_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        for i in 0..4 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let text = String::from_utf8(read(&path)).unwrap();
        let edited = text.replacen("\"r1\"", "\"rX\"", 1);
        let err = verify([("a", edited.as_bytes())]).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.problem.contains("modified"), "{err}");

        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(1);
        let deleted = format!("{}\n", lines.join("\n"));
        let err = verify([("a", deleted.as_bytes())]).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.problem.contains("deleted"), "{err}");
    }

    #[tokio::test]
    async fn an_anchor_reports_records_cut_off_the_start_or_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        // The head the broker logs at opening: next seq 0, the genesis.
        let (seq, hash) = log.head().await.unwrap();
        let opening = Anchor {
            next_seq: seq,
            last_hash: hash,
        };
        for i in 0..3 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let (seq, hash) = log.head().await.unwrap();
        let middle = Anchor {
            next_seq: seq,
            last_hash: hash,
        };
        for i in 3..6 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let text = String::from_utf8(read(&path)).unwrap();
        let whole = verify_anchored([("a", text.as_bytes())], None, &opening).unwrap();
        assert!(whole.anchored);
        assert_eq!(whole.next_anchor().next_seq, 6);
        verify_anchored([("a", text.as_bytes())], None, &middle).unwrap();
        verify_anchored([("a", text.as_bytes())], None, &whole.next_anchor()).unwrap();

        // The first two records cut: alone, the rest still verifies ...
        let lines: Vec<&str> = text.lines().collect();
        let cut = format!("{}\n", lines[2..].join("\n"));
        let alone = verify([("a", cut.as_bytes())]).unwrap();
        assert_eq!(alone.first_seq, Some(2));
        assert!(!alone.anchored);
        // ... against the opening anchor the cut is reported, by seq.
        let err = verify_anchored([("a", cut.as_bytes())], None, &opening).unwrap_err();
        assert!(err.problem.contains("records 0..1 were cut"), "{err}");
        // A later anchor inside what is left still holds.
        verify_anchored([("a", cut.as_bytes())], None, &middle).unwrap();

        // The last record cut: the anchor of a previous check reports it.
        let short = format!("{}\n", lines[..5].join("\n"));
        let err =
            verify_anchored([("a", short.as_bytes())], None, &whole.next_anchor()).unwrap_err();
        assert!(err.problem.contains("cut off its end"), "{err}");

        // Another trail's anchor (same seq, other hash) is refused.
        let foreign = Anchor {
            next_seq: 3,
            last_hash: "ab".repeat(32),
        };
        let err = verify_anchored([("a", text.as_bytes())], None, &foreign).unwrap_err();
        assert!(err.problem.contains("does not pass through"), "{err}");
        let err = verify_anchored([("a", b"".as_slice())], None, &opening).unwrap_err();
        assert!(err.problem.contains("emptied"), "{err}");
    }

    #[test]
    fn an_anchor_is_written_and_read_as_seq_colon_hash() {
        let anchor: Anchor = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(anchor.next_seq, 12);
        assert_eq!(anchor.to_string(), format!("12:{}", "ab".repeat(32)));
        for bad in ["12", "x:ab", "12:abc", &format!("12:{}", "zz".repeat(32))] {
            assert!(bad.parse::<Anchor>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn rotation_and_restart_continue_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::file(&path, 600).unwrap();
            for i in 0..6 {
                log.record(&event(&format!("r{i}"))).await.unwrap();
            }
        }
        // A restart continues from the last record on disk.
        let log = AuditLog::file(&path, 600).unwrap();
        log.record(&event("after-restart")).await.unwrap();
        let files = trail(&path);
        assert!(files.len() >= 3, "rotated into several files");
        let summary = verify_trail(&files, None).unwrap();
        assert_eq!(summary.records, 7);
        // Leaving out a middle file breaks the chain.
        let mut gap = files.clone();
        gap.remove(1);
        assert!(verify_trail(&gap, None).is_err());
    }

    #[tokio::test]
    async fn rotation_keeps_at_most_n_files_and_the_rest_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(AuditOptions {
            max_bytes: 300,
            keep: 2,
            ..AuditOptions::new(AuditSink::File(path.clone()))
        })
        .unwrap();
        for i in 0..20 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        let rotated = rotated_files(&path).unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(rotated[0].0 > 1, "the oldest files were deleted");
        let summary = verify_trail(&trail(&path), None).unwrap();
        assert!(summary.first_seq.unwrap() > 0);
        assert_eq!(summary.first_seq.unwrap() + summary.records, 20);
    }

    #[tokio::test]
    async fn an_hmac_chain_verifies_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = b"a key nobody else reads".to_vec();
        let log = AuditLog::open(AuditOptions {
            hmac_key: Some(Zeroizing::new(key.clone())),
            ..AuditOptions::new(AuditSink::File(path.clone()))
        })
        .unwrap();
        for i in 0..3 {
            log.record(&event(&format!("r{i}"))).await.unwrap();
        }
        drop(log);
        let files = trail(&path);
        assert_eq!(verify_trail(&files, Some(&key)).unwrap().records, 3);
        let err = verify_trail(&files, None).unwrap_err();
        assert!(err.problem.contains("--hmac-key-file"), "{err}");
        let err = verify_trail(&files, Some(b"another key")).unwrap_err();
        assert!(err.problem.contains("HMAC key"), "{err}");
        // A plain SHA-256 chain recomputed by someone without the key fails.
        let text = String::from_utf8(read(&path)).unwrap();
        let mut prev = GENESIS.to_string();
        let mut forged = String::new();
        for line in text.lines() {
            let mut value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["prev"] = prev.clone().into();
            let line = serde_json::to_string(&value).unwrap();
            prev = hex(digest(&SHA256, line.as_bytes()).as_ref());
            forged.push_str(&line);
            forged.push('\n');
        }
        assert!(verify_keyed([("f", forged.as_bytes())], Some(&key)).is_err());
        // The broker refuses to continue a keyed trail without the key.
        assert!(matches!(
            AuditLog::file(&path, 0),
            Err(AuditError::ChainMismatch { keyed: true, .. })
        ));
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

    #[test]
    fn a_damaged_tail_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"{\"seq\":0,\"prev\":\"x\"}\n{\"seq\":1,").unwrap();
        assert!(matches!(
            AuditLog::file(&path, 0),
            Err(AuditError::Damaged(_))
        ));
    }
}
