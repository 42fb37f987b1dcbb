//! The app's side of a proxy: a loopback TCP listener, or a Unix socket
//! made with its mode and owner like a secret file.

use std::{
    io,
    os::unix::fs::{FileTypeExt, PermissionsExt},
};

use tokio::net::{TcpListener, UnixListener};

use super::{
    Io,
    config::{BIND_DIR_PREFIX, Listen, UnixListen},
};
use crate::writer::set_mode_and_owner;

/// A bound listener of either kind.
pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `listen`; a socket path appears already with its mode and owner.
    pub(super) async fn bind(listen: &Listen) -> io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            Listen::Unix(unix) => Ok(Self::Unix(bind_unix(unix)?)),
        }
    }

    /// What it is bound to, for the log.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| format!("tcp ({e})"), |a| a.to_string()),
            Self::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_else(|| "unix".into()),
        }
    }

    /// The next connection from the app.
    pub(super) async fn accept(&self) -> io::Result<Box<dyn Io>> {
        match self {
            Self::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            Self::Unix(l) => Ok(Box::new(l.accept().await?.0)),
        }
    }
}

/// Binds the socket so that it never exists at its path with a wider mode
/// or another owner than asked.
///
/// `bind(2)` makes the node with 0777 less the umask, and the umask is the
/// whole process' (changing it would race with the writer's threads). So
/// the socket is bound in a fresh 0700 directory beside its path, which
/// only the sidecar can enter: nobody can connect to it there. It gets its
/// mode and owner there (the writer's own step), and one `rename(2)` puts it
/// at its path, replacing a stale socket of an earlier run in the same
/// step. A listening socket keeps working when renamed.
fn bind_unix(unix: &UnixListen) -> io::Result<UnixListener> {
    let path = &unix.path;
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Ok(_) => tracing::info!(path = %path.display(), "replacing a stale proxy socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_path(e)),
    }
    let dir = path
        .parent()
        .ok_or_else(|| with_path(io::ErrorKind::InvalidInput.into()))?;
    let private = tempfile::Builder::new()
        .prefix(BIND_DIR_PREFIX)
        .rand_bytes(6)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)
        .map_err(with_path)?;
    // mkdir's mode is masked by the umask, never widened: make sure.
    let mode = std::fs::metadata(private.path())?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(with_path(io::Error::other(
            "private bind directory not 0700",
        )));
    }
    let bound = private.path().join("s");
    let listener = std::os::unix::net::UnixListener::bind(&bound).map_err(with_path)?;
    set_mode_and_owner(&bound, unix.mode, unix.uid, unix.gid).map_err(with_path)?;
    std::fs::rename(&bound, path).map_err(with_path)?;
    drop(private);
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::MetadataExt, path::Path};

    use super::*;

    fn unix(path: &Path, mode: u32) -> Listen {
        Listen::Unix(UnixListen {
            path: path.to_path_buf(),
            mode,
            uid: None,
            gid: Some(nix::unistd::getegid().as_raw()),
        })
    }

    #[tokio::test]
    async fn a_socket_appears_with_its_mode_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = Listener::bind(&unix(&path, 0o660)).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
        // Only the socket is left: the private directory is gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sock");
        std::fs::write(&path, b"data").unwrap();
        let Err(error) = Listener::bind(&unix(&path, 0o600)).await else {
            panic!("bound over a file")
        };
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
