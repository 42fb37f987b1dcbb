//! Writing files the way the kubelet writes Secret volumes (AtomicWriter).
//!
//! ```text
//! outputDir/
//!   ..2026_11_28_10_00_00.123456789.Xq3/   one directory per update
//!     db-password                          the real files
//!   ..data -> ..2026_11_28_...Xq3          swapped with one rename(2)
//!   db-password -> ..data/db-password      visible names, stable links
//! ```
//!
//! A reader that opens `outputDir/db-password` resolves `..data` once, so it
//! sees one whole update: never a partial file, never old and new mixed. If
//! any step before the swap fails (a full tmpfs, say), the new directory is
//! removed and the last good files stay as they were.

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Deserialize;
use zeroize::Zeroizing;

/// The link swapped on every update.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";
/// The longest file name accepted.
pub const MAX_NAME_LEN: usize = 255;

/// A validated file name: one path component, no `..` prefix, bounded length.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct FileName(String);

impl FileName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FileName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(format!("file name must be 1 to {MAX_NAME_LEN} bytes"));
        }
        if name.contains('/') || name.contains('\0') {
            return Err(format!("file name {name:?} must not contain '/' or NUL"));
        }
        // `..`-prefixed names belong to the write protocol itself.
        if name == "." || name.starts_with("..") {
            return Err(format!(
                "file name {name:?} must not be '.' or start with '..'"
            ));
        }
        Ok(Self(name))
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// One file of an update.
pub struct FileContent {
    /// The bytes, wiped when dropped.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Permission bits.
    pub mode: u32,
    /// Owner; `None` keeps the writer's own.
    pub uid: Option<u32>,
    /// Group; `None` keeps the writer's own.
    pub gid: Option<u32>,
}

impl fmt::Debug for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileContent")
            .field("bytes", &"[REDACTED]")
            .field("mode", &format_args!("{:o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

/// Every file of the output directory, as it should be after an update.
pub type Payload = BTreeMap<FileName, FileContent>;

/// What a write did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Whether a new update directory was published.
    pub written: bool,
    /// Files that existed and whose content, mode or owner changed.
    pub changed: Vec<FileName>,
    /// Files that did not exist before.
    pub created: Vec<FileName>,
}

/// Why a write failed. The old files are intact whenever this is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error(
        "{path} is not on tmpfs or ramfs; refusing to write secrets to disk (use --allow-non-tmpfs to override)"
    )]
    NotTmpfs { path: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// SHA-256 over a file's content, mode, uid and gid: what the writer last
/// published for one name. Held in memory only; `Debug` prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
struct FileDigest([u8; 32]);

impl FileDigest {
    fn of(content: &FileContent, uid: u32, gid: u32) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        // Fixed-width fields after a length prefix: no two inputs share an encoding.
        ctx.update(&(content.bytes.len() as u64).to_be_bytes());
        ctx.update(&content.bytes);
        ctx.update(&content.mode.to_be_bytes());
        ctx.update(&uid.to_be_bytes());
        ctx.update(&gid.to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Self(out)
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// An output directory managed with the AtomicWriter protocol.
#[derive(Debug)]
pub struct AtomicDir {
    root: PathBuf,
    /// What each file held when this process last published it. Files are
    /// compared against this, never re-read: the documented deployment
    /// chowns them to the app's uid with mode 0400, and a sidecar without
    /// CAP_DAC_OVERRIDE cannot read them back.
    published: BTreeMap<FileName, FileDigest>,
}

impl AtomicDir {
    /// Opens `root`, creating it if needed. Unless `allow_non_tmpfs`, the
    /// directory must be on tmpfs or ramfs.
    pub fn open(root: impl Into<PathBuf>, allow_non_tmpfs: bool) -> Result<Self, WriteError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        if !allow_non_tmpfs && !is_memory_backed(&root)? {
            return Err(WriteError::NotTmpfs {
                path: root.display().to_string(),
            });
        }
        if allow_non_tmpfs {
            tracing::warn!(dir = %root.display(), "--allow-non-tmpfs: secrets may be written to disk");
        }
        let dir = Self {
            root,
            published: BTreeMap::new(),
        };
        dir.remove_orphans();
        Ok(dir)
    }

    /// Removes what a writer killed mid-update left behind (a process
    /// SIGKILLed by the OOM killer, a container restarted with its emptyDir
    /// kept): update directories that `..data` does not point at, which hold
    /// older or never-published secret values, and half-made links. Done at
    /// open because the next update may never come, or find the content
    /// unchanged and write nothing.
    fn remove_orphans(&self) {
        let current = fs::read_link(self.root.join(DATA_LINK)).ok();
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            if !name_str.starts_with("..") || name_str == DATA_LINK {
                continue;
            }
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(t) if t.is_dir() && current.as_deref() != Some(Path::new(&name)) => {
                    fs::remove_dir_all(&path)
                }
                Ok(t) if t.is_symlink() => fs::remove_file(&path),
                _ => Ok(()),
            };
            match result {
                Ok(()) if current.as_deref() != Some(Path::new(&name)) => {
                    tracing::info!(path = %path.display(), "removed what an interrupted update left")
                }
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a stale entry")
                }
            }
        }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Publishes `payload` as the new content of the directory. Writes
    /// nothing, and reports no change, when every file's content, mode and
    /// owner already match.
    pub fn write(&mut self, payload: &Payload) -> Result<WriteOutcome, WriteError> {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let digests: BTreeMap<FileName, FileDigest> = payload
            .iter()
            .map(|(name, content)| {
                let uid = content.uid.unwrap_or(euid);
                let gid = content.gid.unwrap_or(egid);
                (name.clone(), FileDigest::of(content, uid, gid))
            })
            .collect();
        let (changed, created) = self.compare(payload, &digests, euid, egid);
        if changed.is_empty() && created.is_empty() && self.entry_count() == Some(payload.len()) {
            return Ok(WriteOutcome::default());
        }
        let previous = fs::read_link(self.root.join(DATA_LINK)).ok();

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let staging = tempfile::Builder::new()
            .prefix(&format!("..{}.{:09}.", now.as_secs(), now.subsec_nanos()))
            // Born no wider than 0755 whatever the umask: nobody but the
            // sidecar may add an entry while the files are made.
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in(&self.root)
            .map_err(io_err("create", &self.root))?;
        let staging_path = staging.path().to_path_buf();
        fs::set_permissions(&staging_path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &staging_path))?;

        // Until the swap, dropping `staging` removes it: a failure leaves the
        // old files untouched.
        for (name, content) in payload {
            write_file(&staging_path.join(name.as_str()), content)?;
        }
        let staging_name = staging
            .path()
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| io_err("name", &staging_path)(io::Error::other("no file name")))?;

        let tmp_link = self.root.join(DATA_LINK_TMP);
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&staging_name, &tmp_link)
            .map_err(io_err("symlink", &tmp_link))?;
        let data_link = self.root.join(DATA_LINK);
        if let Err(e) = fs::rename(&tmp_link, &data_link) {
            let _ = fs::remove_file(&tmp_link);
            return Err(io_err("rename", &data_link)(e));
        }
        // Published: from here on the new directory must stay.
        let _ = staging.keep();

        // `..data` already points at the new files: record them even if a
        // visible link below fails, so the next comparison is against what
        // the directory really holds.
        self.published = digests;
        self.link_visible_names(payload)?;
        self.remove_stale(payload, previous.as_deref(), &staging_name);
        Ok(WriteOutcome {
            written: true,
            changed,
            created,
        })
    }

    fn entry_count(&self) -> Option<usize> {
        fs::read_dir(self.root.join(DATA_LINK))
            .ok()
            .map(|entries| entries.count())
    }

    /// Sorts the files of `payload` into those that differ in content, mode
    /// or owner from what the directory holds now, and those it lacks.
    ///
    /// Owner, mode and size come from `stat`, which needs no read access.
    /// Content is compared by digest against what this process published.
    /// Only for a file it has not written yet (the first update after a
    /// restart) does it read the file, and a file it cannot read counts as
    /// changed.
    fn compare(
        &self,
        payload: &Payload,
        digests: &BTreeMap<FileName, FileDigest>,
        euid: u32,
        egid: u32,
    ) -> (Vec<FileName>, Vec<FileName>) {
        let data = self.root.join(DATA_LINK);
        let mut changed = Vec::new();
        let mut created = Vec::new();
        for (name, want) in payload {
            let path = data.join(name.as_str());
            let (Ok(meta), Ok(visible)) = (
                fs::metadata(&path),
                fs::symlink_metadata(self.root.join(name.as_str())),
            ) else {
                created.push(name.clone());
                continue;
            };
            let same_meta = visible.file_type().is_symlink()
                && meta.mode() & 0o7777 == want.mode
                && meta.uid() == want.uid.unwrap_or(euid)
                && meta.gid() == want.gid.unwrap_or(egid)
                && meta.len() == want.bytes.len() as u64;
            let same = same_meta
                && match self.published.get(name) {
                    Some(digest) => digests.get(name) == Some(digest),
                    None => fs::read(&path)
                        .map(Zeroizing::new)
                        .is_ok_and(|have| *have == *want.bytes),
                };
            if !same {
                changed.push(name.clone());
            }
        }
        (changed, created)
    }

    fn link_visible_names(&self, payload: &Payload) -> Result<(), WriteError> {
        for name in payload.keys() {
            let visible = self.root.join(name.as_str());
            let target = Path::new(DATA_LINK).join(name.as_str());
            if fs::read_link(&visible).is_ok_and(|t| t == target) {
                continue;
            }
            let tmp = self.root.join(format!("..link_{}", name.as_str()));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&target, &tmp).map_err(io_err("symlink", &tmp))?;
            fs::rename(&tmp, &visible).map_err(io_err("rename", &visible))?;
        }
        Ok(())
    }

    /// Removes old update directories and links to files no longer written.
    /// Failures here leave clutter, never wrong content, so they are logged.
    fn remove_stale(&self, payload: &Payload, previous: Option<&Path>, current: &Path) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name_str = name.to_string_lossy();
            let path = entry.path();
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            let result = if name_str.starts_with("..") {
                let is_update_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let stale = is_update_dir && Path::new(&name) != current;
                if stale || (previous == Some(Path::new(&name)) && Path::new(&name) != current) {
                    fs::remove_dir_all(&path)
                } else {
                    Ok(())
                }
            } else if is_link
                && fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK))
                && !payload.keys().any(|k| k.as_str() == name_str)
            {
                fs::remove_file(&path)
            } else {
                Ok(())
            };
            if let Err(error) = result {
                tracing::warn!(path = %path.display(), %error, "cannot remove a stale entry");
            }
        }
    }
}

fn write_file(path: &Path, content: &FileContent) -> Result<(), WriteError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(&content.bytes)
        .map_err(io_err("write", path))?;
    set_mode_and_owner(path, content.mode, content.uid, content.gid)
        .map_err(io_err("chmod/chown", path))
}

/// Gives `path` its mode, then its owner (each `None` keeps the sidecar's).
/// Files and the proxies' Unix sockets are both made this way.
///
/// The mode is set explicitly (the umask must not decide it), and before the
/// owner: once the node is the app's, changing its mode would need
/// CAP_FOWNER, while this order needs only CAP_CHOWN. By path, so the caller
/// must hold `path` in a directory only the sidecar can write (the staging
/// directory; a proxy's private bind directory), where nobody can swap it;
/// the owner is set without following a symlink all the same.
pub(crate) fn set_mode_and_owner(
    path: &Path,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::lchown(path, uid, gid)?;
    }
    Ok(())
}

/// Whether `path` lives in memory (tmpfs or ramfs).
pub fn is_memory_backed(path: &Path) -> Result<bool, WriteError> {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    // linux/magic.h; nix names tmpfs but not ramfs.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let stat = statfs(path).map_err(|e| io_err("statfs", path)(e.into()))?;
    Ok(stat.filesystem_type() == TMPFS_MAGIC || stat.filesystem_type() == RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shm_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("coffer-writer-")
            .tempdir_in("/dev/shm")
            .unwrap()
    }

    fn payload(items: &[(&str, &[u8], u32)]) -> Payload {
        items
            .iter()
            .map(|(n, b, m)| {
                (
                    FileName::try_from(n.to_string()).unwrap(),
                    FileContent {
                        bytes: Zeroizing::new(b.to_vec()),
                        mode: *m,
                        uid: None,
                        gid: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn opening_removes_what_a_killed_writer_left() {
        let dir = shm_dir();
        let content = payload(&[("a", b"one", 0o400)]);
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        out.write(&content).unwrap();
        let current = fs::read_link(dir.path().join(DATA_LINK)).unwrap();
        // A writer killed after filling its update directory, and one killed
        // between its links and the renames.
        let orphan = dir.path().join("..1700000000.000000001.abcdef");
        fs::create_dir(&orphan).unwrap();
        fs::write(orphan.join("a"), b"an older value").unwrap();
        std::os::unix::fs::symlink(&current, dir.path().join(DATA_LINK_TMP)).unwrap();
        std::os::unix::fs::symlink("..data/a", dir.path().join("..link_a")).unwrap();

        // The next process finds the content unchanged and writes nothing,
        // yet the leftovers are gone.
        let mut next = AtomicDir::open(dir.path(), false).unwrap();
        assert!(!next.write(&content).unwrap().written);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![
            "..data".to_string(),
            "a".into(),
            current.to_string_lossy().into(),
        ];
        want.sort();
        assert_eq!(names, want);
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"one");
    }

    #[test]
    fn writes_links_and_modes() {
        let dir = shm_dir();
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        assert!(
            out.write(&payload(&[("a", b"one", 0o400), ("b", b"two", 0o440)]))
                .unwrap()
                .written
        );
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"one");
        assert_eq!(
            fs::metadata(dir.path().join("b")).unwrap().mode() & 0o777,
            0o440
        );
        assert_eq!(
            fs::read_link(dir.path().join("a")).unwrap(),
            Path::new("..data/a")
        );
    }

    #[test]
    fn unchanged_content_writes_nothing() {
        let dir = shm_dir();
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        let p = payload(&[("a", b"one", 0o400)]);
        assert!(out.write(&p).unwrap().written);
        let before = fs::read_link(dir.path().join(DATA_LINK)).unwrap();
        assert_eq!(out.write(&p).unwrap(), WriteOutcome::default());
        assert_eq!(fs::read_link(dir.path().join(DATA_LINK)).unwrap(), before);
        // A mode change alone is a change.
        assert!(
            out.write(&payload(&[("a", b"one", 0o440)]))
                .unwrap()
                .written
        );
    }

    #[test]
    fn published_files_are_compared_by_digest_not_read_back() {
        let dir = shm_dir();
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        let p = payload(&[("a", b"one", 0o400), ("b", b"two", 0o400)]);
        out.write(&p).unwrap();
        // Same size, same mode: only reading the file would tell it apart.
        // The writer must not read it (the app may own it, unreadable to
        // the sidecar), so the digest of what it wrote decides.
        let real = fs::canonicalize(dir.path().join("a")).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&real, b"xxx").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(out.write(&p).unwrap(), WriteOutcome::default());

        // A new value of `b` rewrites the directory but reports only `b`.
        let next = payload(&[("a", b"one", 0o400), ("b", b"TWO", 0o400)]);
        let outcome = out.write(&next).unwrap();
        assert!(outcome.written);
        assert_eq!(
            outcome.changed,
            vec![FileName::try_from("b".to_string()).unwrap()]
        );
        // The digest covers the owner and mode too.
        let mut chowned = payload(&[("a", b"one", 0o400), ("b", b"TWO", 0o400)]);
        for content in chowned.values_mut() {
            content.gid = Some(nix::unistd::getegid().as_raw());
        }
        assert_eq!(out.write(&chowned).unwrap(), WriteOutcome::default());
        assert!(format!("{out:?}").contains("[REDACTED]"));
    }

    #[test]
    fn a_restarted_writer_reads_what_it_did_not_write() {
        let dir = shm_dir();
        let p = payload(&[("a", b"one", 0o400)]);
        AtomicDir::open(dir.path(), false)
            .unwrap()
            .write(&p)
            .unwrap();
        let mut again = AtomicDir::open(dir.path(), false).unwrap();
        assert_eq!(again.write(&p).unwrap(), WriteOutcome::default());
        let outcome = again.write(&payload(&[("a", b"two", 0o400)])).unwrap();
        assert_eq!(outcome.changed.len(), 1);
    }

    #[test]
    fn reports_only_the_files_that_changed() {
        let dir = shm_dir();
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        let first = out
            .write(&payload(&[("a", b"1", 0o400), ("b", b"1", 0o400)]))
            .unwrap();
        assert_eq!(first.created.len(), 2);
        assert!(first.changed.is_empty());
        let second = out
            .write(&payload(&[("a", b"1", 0o400), ("b", b"2", 0o400)]))
            .unwrap();
        assert_eq!(
            second.changed,
            vec![FileName::try_from("b".to_string()).unwrap()]
        );
        // Dropping a file is a write without a changed file.
        let third = out.write(&payload(&[("a", b"1", 0o400)])).unwrap();
        assert!(third.written && third.changed.is_empty() && third.created.is_empty());
    }

    #[test]
    fn updates_remove_old_directories_and_dropped_files() {
        let dir = shm_dir();
        let mut out = AtomicDir::open(dir.path(), false).unwrap();
        out.write(&payload(&[("a", b"1", 0o400), ("b", b"1", 0o400)]))
            .unwrap();
        out.write(&payload(&[("a", b"2", 0o400)])).unwrap();
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("..") && *n != DATA_LINK)
                .count(),
            1,
            "{names:?}"
        );
        assert!(!names.contains(&"b".to_string()), "{names:?}");
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"2");
    }

    #[test]
    fn refuses_a_disk_directory() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert!(matches!(
            AtomicDir::open(dir.path(), false),
            Err(WriteError::NotTmpfs { .. })
        ));
        assert!(AtomicDir::open(dir.path(), true).is_ok());
    }

    #[test]
    fn file_names_are_single_safe_components() {
        for bad in ["", "a/b", "..", "..data", ".", "x\0y", &"n".repeat(256)] {
            assert!(FileName::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
        assert!(FileName::try_from(".env".to_string()).is_ok());
    }
}
