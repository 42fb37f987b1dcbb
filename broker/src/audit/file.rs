//! The file sink: mode 0600, rotated by size (`FILE` -> `FILE.000001`, ...),
//! at most `keep` rotated files, the chain resumed from the last record on
//! disk, and a record cut back when a write fails half-way.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{
    chain::{GENESIS, HMAC_CHAIN, Link},
    error::AuditError,
};

/// How far back from the end of a file the last record is looked for.
const TAIL_BYTES: u64 = 64 * 1024;

/// The live file of a file sink and what it needs to rotate.
pub(super) struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
    next_index: u64,
}

impl RotatingFile {
    pub(super) fn open(
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

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
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
pub(super) fn rotated_files(path: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        AuditLog, AuditOptions, AuditSink,
        fixtures::{event, trail, verify_trail},
    };

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
