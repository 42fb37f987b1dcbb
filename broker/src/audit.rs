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
//! it. A file sink rotates by size (`FILE` → `FILE.000001`, ...) and the chain
//! continues across files; on restart it continues from the last record on
//! disk.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use ring::digest::{SHA256, digest};
use serde::Serialize;

use crate::{auth::WorkloadIdentity, policy::Capability};

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How far back from the end of a file the last record is looked for.
const TAIL_BYTES: u64 = 64 * 1024;

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
}

#[derive(Serialize)]
struct Identity<'a> {
    issuer: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    pod: Option<&'a str>,
}

#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    time: String,
    request_id: &'a str,
    peer: Option<&'a str>,
    identity: Option<Identity<'a>>,
    rpc: &'a str,
    path: Option<&'a str>,
    capability: Option<&'static str>,
    version: Option<u64>,
    decision: Outcome,
    reason: &'a str,
    rule: Option<&'a str>,
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
    #[error("cannot encode audit record: {0}")]
    Encode(#[from] serde_json::Error),
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

struct Chain {
    sink: Sink,
    seq: u64,
    prev: String,
}

/// The audit trail. Writes are serialized: the chain is one sequence.
pub struct AuditLog {
    chain: Mutex<Chain>,
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
    pub fn stdout() -> Self {
        Self::with_sink(Sink::Stdout, 0, GENESIS.to_string())
    }

    /// Records to `path` (mode 0600), rotating once a file would exceed
    /// `max_bytes` (0: never). Continues the chain found on disk.
    pub fn file(path: &Path, max_bytes: u64) -> Result<Self, AuditError> {
        let (file, seq, prev) = RotatingFile::open(path, max_bytes)?;
        Ok(Self::with_sink(Sink::File(file), seq, prev))
    }

    fn with_sink(sink: Sink, seq: u64, prev: String) -> Self {
        Self {
            chain: Mutex::new(Chain { sink, seq, prev }),
            fail_open: false,
        }
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
    pub fn record(&self, event: &AuditEvent<'_>) -> Result<(), AuditError> {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        let record = Record {
            seq: chain.seq,
            time: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            request_id: event.request_id,
            peer: event.peer,
            identity: event.identity.map(|w| Identity {
                issuer: &w.issuer,
                namespace: &w.namespace,
                service_account: &w.service_account,
                pod: w.pod_name.as_deref(),
            }),
            rpc: event.rpc,
            path: event.path,
            capability: event.capability.map(Capability::as_str),
            version: event.version,
            decision: event.decision,
            reason: event.reason,
            rule: event.rule,
            prev: &chain.prev,
        };
        let line = serde_json::to_string(&record)?;
        let hash = hex(digest(&SHA256, line.as_bytes()).as_ref());
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        match &mut chain.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .map_err(|source| AuditError::Io {
                        path: "stdout".into(),
                        source,
                    })?;
            }
            Sink::File(file) => file.write(&bytes)?,
        }
        chain.seq += 1;
        chain.prev = hash;
        Ok(())
    }
}

struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    next_index: u64,
}

impl RotatingFile {
    fn open(path: &Path, max_bytes: u64) -> Result<(Self, u64, String), AuditError> {
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
            && let Some(last) = last_record(&source)?
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
        }
        self.file.write_all(bytes).map_err(|e| io(&self.path, e))?;
        self.size += bytes.len() as u64;
        Ok(())
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

/// The `seq + 1` and hash of the last record of a regular file, if any.
fn last_record(path: &Path) -> Result<Option<(u64, String)>, AuditError> {
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
    let seq = serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .ok_or_else(damaged)?;
    Ok(Some((seq + 1, hex(digest(&SHA256, line).as_ref()))))
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
}

/// Checks a chain given as `(file name, contents)` in order (oldest first).
/// A chain may start mid-way (older files gone): its first record is then
/// trusted as the anchor, unless its `seq` is 0, which must follow
/// [`GENESIS`].
pub fn verify<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<ChainSummary, BrokenChain> {
    let mut prev: Option<(String, u64, String, usize)> = None; // hash, seq, file, line
    let mut summary = ChainSummary {
        records: 0,
        first_seq: None,
        last_hash: GENESIS.to_string(),
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
                        return Err(BrokenChain {
                            file: prev_file.clone(),
                            line: *prev_line,
                            problem: format!(
                                "record seq {prev_seq} was modified: it does not hash to the \
                                 prev of the record after it ({name}:{number})"
                            ),
                        });
                    }
                }
            }
            let hash = hex(digest(&SHA256, line).as_ref());
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
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn records_chain_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        for i in 0..5 {
            log.record(&event(&format!("r{i}"))).unwrap();
        }
        let bytes = read(&path);
        let summary = verify([("audit.log", bytes.as_slice())]).unwrap();
        assert_eq!((summary.records, summary.first_seq), (5, Some(0)));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn an_edit_and_a_deletion_are_each_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::file(&path, 0).unwrap();
        for i in 0..4 {
            log.record(&event(&format!("r{i}"))).unwrap();
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

    #[test]
    fn rotation_and_restart_continue_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::file(&path, 600).unwrap();
            for i in 0..6 {
                log.record(&event(&format!("r{i}"))).unwrap();
            }
        }
        // A restart continues from the last record on disk.
        let log = AuditLog::file(&path, 600).unwrap();
        log.record(&event("after-restart")).unwrap();
        let mut files: Vec<(String, Vec<u8>)> = rotated_files(&path)
            .unwrap()
            .into_iter()
            .map(|(_, p)| (p.display().to_string(), read(&p)))
            .collect();
        assert!(files.len() >= 2, "rotated into several files");
        files.push(("audit.log".into(), read(&path)));
        let summary = verify(files.iter().map(|(n, b)| (n.as_str(), b.as_slice()))).unwrap();
        assert_eq!(summary.records, 7);
        // Leaving out a middle file breaks the chain.
        let mut gap = files.clone();
        gap.remove(1);
        assert!(verify(gap.iter().map(|(n, b)| (n.as_str(), b.as_slice()))).is_err());
    }

    #[test]
    fn an_unwritable_sink_reports_an_error_and_the_chain_holds() {
        let log = AuditLog::file(Path::new("/dev/full"), 0).unwrap();
        assert!(log.record(&event("r")).is_err());
        assert_eq!(log.chain.lock().unwrap().seq, 0);
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
