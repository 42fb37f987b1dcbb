//! Reading the files a Coffer sidecar writes.
//!
//! The sidecar keeps the kubelet's AtomicWriter layout: each update lands in a
//! fresh directory and one `rename` of the `..data` link publishes it. Reading
//! through the visible name therefore always yields one whole version, and a
//! change of `..data`'s target is the signal that a new version is there.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
};

use coffer_proto::{SecretBytes, SecretData};
use futures::{Stream, StreamExt, stream::BoxStream};
use notify::Watcher;
use secrecy::SecretString;

use crate::{Error, Secret};

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

/// One file a Coffer sidecar writes, read and watched.
///
/// ```no_run
/// # async fn demo() -> Result<(), coffer::Error> {
/// use coffer::FileSecret;
/// use futures::StreamExt;
///
/// let password = FileSecret::new("/var/run/secrets/app", "db-password");
/// let now = password.read_str()?;
/// let mut updates = password.watch()?;
/// while let Some(value) = updates.next().await {
///     let value = value?; // the whole new file, in a zeroizing buffer
/// #   let _ = value;
/// }
/// # let _ = now;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileSecret {
    dir: PathBuf,
    name: String,
}

impl FileSecret {
    /// The file `name` in the sidecar's output directory `dir`.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            name: name.into(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// The file's bytes, in a zeroizing buffer.
    pub fn read(&self) -> Result<SecretBytes, Error> {
        read(&self.dir, &self.name)
    }

    /// The file as text (UTF-8), in a zeroizing string.
    pub fn read_str(&self) -> Result<SecretString, Error> {
        Ok(SecretString::from(
            self.as_secret()?.expose_str()?.to_string(),
        ))
    }

    /// The file decoded as JSON into `T`; errors say where, never what.
    pub fn read_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        self.as_secret()?.json()
    }

    fn as_secret(&self) -> Result<Secret, Error> {
        Ok(Secret::local(
            self.path().display().to_string(),
            0,
            SecretData::Bytes(self.read()?),
        ))
    }

    /// Watches the directory (inotify) and yields the file's new content
    /// after each `..data` swap, once per swap; swaps that come faster than
    /// they are read collapse into the newest. The current content is not
    /// yielded: [`Self::read`] it first.
    pub fn watch(&self) -> Result<FileWatch, Error> {
        let (tx, rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // A full channel already holds a wake-up: nothing is lost.
                    let _ = tx.try_send(());
                }
            })
            .map_err(notify_error)?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .map_err(notify_error)?;
        // Read after the watch is set, so a swap in between is not missed.
        let state = WatchState {
            _watcher: watcher,
            rx,
            file: self.clone(),
            published: data_target(&self.dir),
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            loop {
                state.rx.recv().await?;
                let target = data_target(&state.file.dir);
                if target.is_some() && target != state.published {
                    state.published = target;
                    return Some((state.file.read(), state));
                }
            }
        })
        .boxed();
        Ok(FileWatch { inner })
    }
}

/// Where `..data` points now.
fn data_target(dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(change_marker(dir)).ok()
}

fn notify_error(error: notify::Error) -> Error {
    match error.kind {
        notify::ErrorKind::Io(io) => Error::Io(io),
        _ => Error::Io(std::io::Error::other(error.to_string())),
    }
}

struct WatchState {
    _watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::Receiver<()>,
    file: FileSecret,
    published: Option<PathBuf>,
}

/// The stream returned by [`FileSecret::watch`]; watching stops when it is
/// dropped.
pub struct FileWatch {
    inner: BoxStream<'static, Result<SecretBytes, Error>>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl FileWatch {
    /// The next content, or `None` if watching stopped.
    pub async fn next(&mut self) -> Option<Result<SecretBytes, Error>> {
        self.inner.next().await
    }
}

impl Stream for FileWatch {
    type Item = Result<SecretBytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reads_a_file_into_a_redacted_buffer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"canary").unwrap();
        let value = super::read(dir.path(), "db").unwrap();
        assert_eq!(value.expose(), b"canary");
        assert_eq!(format!("{value:?}"), "[REDACTED]");
    }

    /// Publishes `content` the way the sidecar does: a fresh directory,
    /// then one rename of `..data`.
    fn publish(dir: &Path, n: u32, content: &str) {
        let version = dir.join(format!("..v{n}"));
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("db"), content).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(DATA_LINK)).unwrap();
        if n == 1 {
            std::os::unix::fs::symlink("..data/db", dir.join("db")).unwrap();
        }
    }

    #[tokio::test]
    async fn watch_yields_once_per_data_swap() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), 1, "one");
        let file = FileSecret::new(dir.path(), "db");
        assert_eq!(file.read().unwrap().expose(), b"one");
        let mut watch = file.watch().unwrap();
        // A file beside it that is not a swap yields nothing.
        std::fs::write(dir.path().join("unrelated"), "x").unwrap();
        publish(dir.path(), 2, "two");
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.expose(), b"two");
        publish(dir.path(), 3, "three");
        let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.expose(), b"three");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), watch.next())
                .await
                .is_err(),
            "no yield without a swap"
        );
    }
}
