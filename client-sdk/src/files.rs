//! Reading the files a Coffer sidecar writes.
//!
//! The sidecar keeps the kubelet's AtomicWriter layout: each update lands in a
//! fresh directory and one `rename` of the `..data` link publishes it. Reading
//! through the visible name therefore always yields one whole version.

use std::path::{Path, PathBuf};

use coffer_proto::SecretBytes;

use crate::Error;

/// The link the sidecar swaps on every update; watch it to learn of changes.
pub const DATA_LINK: &str = "..data";

/// Reads the secret file `name` from the sidecar's output directory `dir`.
pub fn read(dir: impl AsRef<Path>, name: &str) -> Result<SecretBytes, Error> {
    Ok(SecretBytes::new(std::fs::read(dir.as_ref().join(name))?))
}

/// The path whose change signals a new version of every file in `dir`.
pub fn change_marker(dir: impl AsRef<Path>) -> PathBuf {
    dir.as_ref().join(DATA_LINK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_file_into_a_redacted_buffer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"canary").unwrap();
        let value = super::read(dir.path(), "db").unwrap();
        assert_eq!(value.expose(), b"canary");
        assert_eq!(format!("{value:?}"), "[REDACTED]");
    }
}
