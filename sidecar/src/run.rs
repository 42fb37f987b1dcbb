//! The sidecar's two modes: `--once` for init containers, and the long-running
//! watch that keeps files current.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use coffer::{Applied, ApplyState, Client, Code, Secret, SecretBytes, SecretData, TokenSource};
use coffer_runtime::Backoff;
use tokio::{sync::watch, time::Instant};

use crate::{
    action::Actions,
    config::Config,
    render::{DotenvNote, Format, RenderError, dotenv_notes, render},
    writer::{AtomicDir, FileContent, Payload, WriteError, WriteOutcome},
};

/// Why the sidecar stopped or an update failed. Never includes a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("cannot render {file}: {source}")]
    Render {
        file: String,
        #[source]
        source: RenderError,
    },
    #[error("{path}: {source}")]
    Fetch {
        path: String,
        #[source]
        source: coffer::Error,
    },
    #[error(transparent)]
    Broker(#[from] coffer::Error),
    #[error("cannot read the CA file {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gave up after {0:?}: not every secret could be fetched")]
    Timeout(Duration),
}

impl SidecarError {
    /// Errors that waiting will not fix: retrying them only hides the problem.
    fn is_permanent(&self) -> bool {
        let code = match self {
            Self::Fetch { source, .. } | Self::Broker(source) => source.code(),
            Self::Render { .. } => return true,
            // A chown or chmod this process may not do (EPERM, EACCES) will
            // not be allowed a second later either.
            Self::Write(WriteError::Io { source, .. }) => {
                return source.kind() == std::io::ErrorKind::PermissionDenied;
            }
            _ => None,
        };
        matches!(
            code,
            Some(Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument)
        )
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    config: Config,
    client: Client,
    out: AtomicDir,
    current: BTreeMap<String, Secret>,
    ready: watch::Sender<bool>,
    actions: Option<Actions>,
    credentials: crate::proxy::Credentials,
}

impl Sidecar {
    /// Checks the output directory and prepares a (lazy) broker connection.
    pub async fn new(config: Config) -> Result<Self, SidecarError> {
        let out = AtomicDir::open(&config.output_dir, config.allow_non_tmpfs)?;
        let mut builder =
            Client::builder(config.broker.clone()).token(TokenSource::file(&config.token_file));
        if let Some(ca) = &config.ca_file {
            // Read here to fail at start with a clear error; the SDK reads
            // it again for each new connection, so a rotated CA bundle is
            // trusted from the next reconnect on while the open stream
            // goes on.
            std::fs::File::open(ca)
                .map(drop)
                .map_err(|source| SidecarError::Ca {
                    path: ca.display().to_string(),
                    source,
                })?;
            builder = builder.ca_file(ca);
        }
        let client = builder
            .timeout(Duration::from_secs(30))
            .connect_lazy()
            .await?;
        if let Some(audience) = &config.audience {
            // The kubelet mints the token for this audience; the broker checks it.
            tracing::info!(audience, token_file = %config.token_file.display(), "using the projected token");
        }
        Ok(Self {
            client,
            out,
            current: BTreeMap::new(),
            ready: watch::Sender::new(false),
            actions: None,
            credentials: crate::proxy::Credentials::new(&config.proxies),
            config,
        })
    }

    /// The proxies' credentials, fed by every update (docs/proxy.md).
    pub fn credentials(&self) -> &crate::proxy::Credentials {
        &self.credentials
    }

    /// Becomes `true` once every secret has been written.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Starts the configured actions on the current runtime. Without this
    /// (as in `--once`), changes are written but nobody is told.
    pub fn start_actions(&mut self, retry_base: Duration) {
        self.actions = Some(Actions::spawn(self.config.actions(), retry_base));
    }

    /// Fetches every secret, writes them, and returns. Retries what may
    /// recover (an unreachable broker, a missing secret) until `deadline`;
    /// fails at once on what will not (denied, unauthenticated, a local
    /// permission error). The deadline bounds each attempt too, so a broker
    /// that accepts the connection and never answers cannot hold it longer.
    pub async fn run_once(&mut self, deadline: Duration) -> Result<(), SidecarError> {
        let until = Instant::now() + deadline;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let attempt = async {
                let secrets = self.fetch_all().await?;
                self.apply(secrets, Instant::now()).await
            };
            let error = match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => {
                    tracing::error!("the attempt did not finish before the deadline");
                    return Err(SidecarError::Timeout(deadline));
                }
            };
            if error.is_permanent() {
                return Err(error);
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay > until {
                tracing::error!(error = %error, "last attempt failed");
                return Err(SidecarError::Timeout(deadline));
            }
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "fetch failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn fetch_all(&self) -> Result<Vec<Secret>, SidecarError> {
        let paths = self.config.paths();
        let results = self.client.get_many(paths.iter().cloned()).await?;
        paths
            .into_iter()
            .zip(results)
            .map(|(path, result)| result.map_err(|source| SidecarError::Fetch { path, source }))
            .collect()
    }

    /// Watches every secret and rewrites files on change until `shutdown`.
    /// While the broker is away, the last good files stay.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), SidecarError> {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let result = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                result = self.watch_once(&mut backoff) => result,
            };
            match result {
                Ok(()) => tracing::info!("watch stream ended; reconnecting"),
                Err(error) => {
                    tracing::warn!(error = %error, "watch failed; keeping the last good files")
                }
            }
            crate::metrics::reconnect();
            let delay = backoff.next_delay();
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn watch_once(&mut self, backoff: &mut Backoff) -> Result<(), SidecarError> {
        let mut stream = self.client.watch_connection(self.config.paths()).await?;
        tracing::info!(paths = self.config.secrets.len(), "watching");
        while let Some(event) = stream.next().await {
            let event = event?;
            let received = Instant::now();
            backoff.reset();
            if let Err(error) = self.apply(event.secrets, received).await {
                // One bad update must not end the watch: the next may be fine.
                tracing::error!(error = %error, "update not applied; the previous files stay");
            }
        }
        Ok(())
    }

    /// Merges `secrets` into the current set, publishes the files, tells the
    /// app about what changed, and acknowledges the versions to the broker.
    async fn apply(&mut self, secrets: Vec<Secret>, received: Instant) -> Result<(), SidecarError> {
        let changed: Vec<(String, u64)> = secrets
            .iter()
            .map(|s| (s.path().to_string(), s.version()))
            .collect();
        let mut next = self.current.clone();
        for secret in secrets {
            next.insert(secret.path().to_string(), secret);
        }
        let result = self.publish(&next);
        let state = match &result {
            Ok(outcome) if outcome.written => {
                let files: Vec<&str> = outcome.changed.iter().map(|f| f.as_str()).collect();
                let created: Vec<&str> = outcome.created.iter().map(|f| f.as_str()).collect();
                tracing::info!(
                    versions = ?changed,
                    changed = ?files,
                    created = ?created,
                    apply_us = received.elapsed().as_micros() as u64,
                    "secrets written"
                );
                // A file written for the first time has no reader to tell:
                // the app reads it when it starts.
                if let Some(actions) = &self.actions {
                    actions.notify(&outcome.changed);
                }
                ApplyState::Applied
            }
            Ok(_) => {
                tracing::debug!(versions = ?changed, "content unchanged; nothing written");
                ApplyState::Applied
            }
            Err(_) => {
                crate::metrics::write_failure();
                ApplyState::Failed
            }
        };
        if let Ok(outcome) = &result {
            let files = if outcome.written {
                outcome.changed.len() + outcome.created.len()
            } else {
                0
            };
            crate::metrics::applied(files, changed.iter().map(|(p, v)| (p.as_str(), *v)));
        }
        if result.is_ok() {
            self.current = next;
            // Held in memory only: a new version serves new upstream connections.
            self.credentials.publish(self.current.values());
            if !*self.ready.borrow()
                && self
                    .config
                    .paths()
                    .iter()
                    .all(|p| self.current.contains_key(p))
            {
                self.become_ready();
            }
        }
        let reason = match &result {
            Err(SidecarError::Write(WriteError::Io { source, .. })) => source.kind().to_string(),
            Err(_) => "render failed".to_string(),
            Ok(_) => String::new(),
        };
        let acks = changed
            .into_iter()
            .map(|(path, version)| Applied {
                path,
                version,
                state,
                reason: reason.clone(),
            })
            .collect();
        if let Err(error) = self.client.ack(acks).await {
            tracing::debug!(%error, "acknowledgement not delivered");
        }
        result.map(|_| ())
    }

    fn become_ready(&mut self) {
        if let Some(file) = &self.config.ready_file
            && let Err(error) = write_ready_file(file)
        {
            tracing::error!(file = %file.display(), %error, "cannot write the ready file");
            return;
        }
        tracing::info!("every secret is written; ready");
        self.ready.send_replace(true);
    }

    fn publish(
        &mut self,
        secrets: &BTreeMap<String, Secret>,
    ) -> Result<WriteOutcome, SidecarError> {
        let mut payload = Payload::new();
        let mut notes = Vec::new();
        for spec in &self.config.secrets {
            let Some(secret) = secrets.get(spec.base_path()) else {
                // Not fetched yet: a snapshot always carries every path.
                continue;
            };
            let render_error = |source| SidecarError::Render {
                file: spec.file.as_str().to_string(),
                source,
            };
            // `path#key` is picked here rather than by the broker, so that
            // every file of one secret changes in the same update.
            let selected;
            let data = match spec.key() {
                None => secret.data(),
                Some(key) => {
                    let value = secret
                        .expose_key(key)
                        .ok_or_else(|| render_error(RenderError::MissingKey(key.to_string())))?;
                    selected = SecretData::Bytes(SecretBytes::from(value));
                    &selected
                }
            };
            let render_spec = spec.render_spec();
            let bytes = render(data, &render_spec).map_err(render_error)?;
            if spec.format == Format::Dotenv {
                for note in dotenv_notes(data, &render_spec.single_key) {
                    notes.push((spec.file.clone(), note));
                }
            }
            payload.insert(
                spec.file.clone(),
                FileContent {
                    bytes,
                    mode: spec.mode(),
                    uid: spec.uid,
                    gid: spec.gid,
                },
            );
        }
        let outcome = self.out.write(&payload)?;
        // Once per file written, not per update: by file and key, never the value.
        for (file, note) in notes {
            if !outcome.changed.contains(&file) && !outcome.created.contains(&file) {
                continue;
            }
            match note {
                DotenvNote::Interpolates(key) => tracing::warn!(
                    file = file.as_str(),
                    key,
                    "a dotenv value holds `${{`: python-dotenv substitutes other variables into it unless read with interpolate=False"
                ),
                DotenvNote::ShellEscaped(key) => tracing::warn!(
                    file = file.as_str(),
                    key,
                    "a dotenv value holds `$` or a backtick with `'` or a backslash pair: written for bash; python-dotenv keeps the backslash before `$` and backticks"
                ),
                DotenvNote::CarriageReturn(key) => tracing::warn!(
                    file = file.as_str(),
                    key,
                    "a dotenv value holds a carriage return, written raw: Python readers must open the file with newline='' to keep it"
                ),
            }
        }
        Ok(outcome)
    }
}

fn write_ready_file(path: &Path) -> std::io::Result<()> {
    // Write then rename, so a probe never sees a half-made file.
    let tmp = path.with_extension("coffer-tmp");
    std::fs::write(&tmp, "ready\n")?;
    std::fs::rename(&tmp, path)
}

/// Resolves once `path` exists, checking twice a second.
pub async fn file_exists(path: PathBuf) {
    loop {
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tracing::info!(path = %path.display(), "exit file exists; stopping");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Makes the process undumpable and disables core files, so a crash or a
/// debugger cannot copy secrets out of memory.
pub fn harden_process() {
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%error, "cannot make the process non-dumpable");
    }
    if let Err(error) =
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
    {
        tracing::warn!(%error, "cannot disable core files");
    }
}
