//! A tiny tmpfs for the tests of a full disk: the sidecar's output or the
//! broker's audit trail on a file system that runs out of room.

use std::{io::Write, path::Path, process::Command};

/// A tiny tmpfs, unmounted when dropped.
pub struct TinyTmpfs(pub tempfile::TempDir);

impl TinyTmpfs {
    /// Mounts one of `size` (e.g. `16k`); needs root.
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs needs root");
        Self(dir)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the file system up.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(self.0.path().join("filler")).unwrap();
        let block = [0u8; 1024];
        while file.write_all(&block).is_ok() {}
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
