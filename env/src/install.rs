//! `coffer-env --install DIR`: the injected init container copies this
//! binary into a Memory emptyDir the app's container mounts, so any image
//! (distroless too) can run it. The image has no shell and no `cp`: the
//! binary copies itself.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// The file name the copy gets in `dir`.
pub const NAME: &str = "coffer-env";

/// Copies the running binary to `dir/coffer-env`, mode 0555, replacing any
/// copy atomically (written beside it, then renamed). Returns the path.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    let source = std::env::current_exe()?;
    let bytes = fs::read(&source)?;
    let target = dir.join(NAME);
    let partial = dir.join(format!(".{NAME}.partial"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&partial)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o555))?;
    fs::rename(&partial, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_the_running_binary_and_read_only() {
        let dir = tempfile_dir();
        let target = install(&dir).unwrap();
        let copy = fs::read(&target).unwrap();
        let original = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(copy, original);
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o555);
        // A second install replaces the first (the file is read-only).
        install(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("coffer-env-install-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
