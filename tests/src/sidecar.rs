//! The sidecar as the tests run it: the real `coffer-sidecar` binary with a
//! token file and a config written for it, its output directory a fresh one
//! under /dev/shm (a tmpfs, as in a pod); and the application beside it, a
//! shell that counts the SIGHUPs the sidecar sends.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    broker::BrokerProcess,
    process::{Process, binary, eventually},
    tokens::pod_token,
};

/// A sidecar process writing into a fresh directory under /dev/shm.
pub struct SidecarProcess {
    pub process: Process,
    pub out_dir: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

/// What [`SidecarProcess::start_with`] can change beyond [`SidecarProcess::start`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SidecarOptions<'a> {
    /// Where the output directory is made (default `/dev/shm`).
    pub out_parent: Option<&'a Path>,
    /// Extra top-level YAML lines (e.g. `adminListen: 127.0.0.1:0\n`).
    pub global_yaml: &'a str,
    /// Extra command-line arguments.
    pub args: &'a [&'a str],
}

impl SidecarProcess {
    /// Starts a sidecar for `token` with `secrets_yaml` (the `secrets:` list
    /// items) and extra CLI `args` such as `--once`.
    pub fn start(broker: &BrokerProcess, token: &str, secrets_yaml: &str, args: &[&str]) -> Self {
        Self::start_with(
            &broker.endpoint,
            token,
            secrets_yaml,
            SidecarOptions {
                args,
                ..Default::default()
            },
        )
    }

    /// Starts a sidecar against `endpoint` with more control than [`Self::start`].
    pub fn start_with(
        endpoint: &str,
        token: &str,
        secrets_yaml: &str,
        options: SidecarOptions<'_>,
    ) -> Self {
        Self::start_wrapped(&[], endpoint, token, secrets_yaml, options)
    }

    /// Like [`Self::start_with`], run through `wrapper` (a program and its
    /// arguments, e.g. `setpriv` dropping capabilities) when it is not empty.
    pub fn start_wrapped(
        wrapper: &[&str],
        endpoint: &str,
        token: &str,
        secrets_yaml: &str,
        options: SidecarOptions<'_>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = tempfile::Builder::new()
            .prefix("coffer-e2e-")
            .tempdir_in(options.out_parent.unwrap_or(Path::new("/dev/shm")))
            .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.path().join("sidecar.yaml");
        std::fs::write(
            &config,
            format!(
                "broker: {endpoint}\ntokenFile: {}\noutputDir: {}\n{}secrets:\n{secrets_yaml}",
                token_file.display(),
                out_dir.path().display(),
                options.global_yaml,
            ),
        )
        .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("coffer-sidecar"));
                command
            }
            None => Command::new(binary("coffer-sidecar")),
        };
        command.arg("--config").arg(&config).args(options.args);
        let process = Process::spawn(command, dir.path().join("sidecar.log"));
        Self {
            process,
            out_dir,
            _dir: dir,
        }
    }

    /// A file in the output directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.out_dir.path().join(name)
    }

    /// The token file the sidecar reads (replace it to refresh the token).
    pub fn token_file(&self) -> PathBuf {
        self._dir.path().join("token")
    }

    /// Waits until the sidecar's output contains `needle`; returns the output.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.process.wait_for_output(needle, timeout)
    }

    /// The address the admin endpoint bound (configure `adminListen: 127.0.0.1:0`).
    pub fn admin_addr(&self) -> String {
        self.process
            .logged_addr("admin endpoint listening", Duration::from_secs(20))
    }

    /// The address the quit endpoint bound (configure `quitListen: 127.0.0.1:0`).
    pub fn quit_addr(&self) -> String {
        self.process
            .logged_addr("quit endpoint listening", Duration::from_secs(20))
    }

    /// Waits until every file in `names` exists; panics with the sidecar's
    /// output otherwise.
    pub fn wait_for_files(&self, names: &[&str], timeout: Duration) {
        let until = Instant::now() + timeout;
        while !names.iter().all(|n| self.file(n).exists()) {
            assert!(
                Instant::now() < until,
                "files {names:?} did not appear; sidecar output:\n{}",
                self.process.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory `..data` points at now, if any.
    pub fn data_target(&self) -> Option<PathBuf> {
        std::fs::read_link(self.out_dir.path().join("..data")).ok()
    }
}

/// A sidecar of pod `pod` (of `shop/web`) writing `shop/db#password` to the
/// file `password`, in a directory under `out_parent` (default /dev/shm).
pub fn password_sidecar(
    broker: &BrokerProcess,
    pod: &str,
    out_parent: Option<&Path>,
) -> SidecarProcess {
    SidecarProcess::start_with(
        &broker.endpoint,
        &pod_token(pod),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            out_parent,
            ..Default::default()
        },
    )
}

/// What a [`password_sidecar`]'s file holds now ("" before the first write).
pub fn password_of(sidecar: &SidecarProcess) -> String {
    std::fs::read_to_string(sidecar.file("password")).unwrap_or_default()
}

/// A shell process that writes its pid to a file and counts the SIGHUPs it
/// receives, one line per signal, in another file.
pub struct HupCounter {
    pub process: Process,
    pub pid_file: PathBuf,
    count_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl HupCounter {
    /// Starts the counter and waits for its pid file.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let count_file = dir.path().join("hups");
        // `sleep & wait` lets the trap run as soon as a signal arrives.
        let script = format!(
            "trap 'echo hup >> {count}' HUP; echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; \
             while true; do sleep 1 & wait $!; done",
            count = count_file.display(),
            pid = pid_file.display(),
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        let process = Process::spawn(command, dir.path().join("counter.log"));
        eventually(Duration::from_secs(10), "the pid file", || {
            pid_file.exists().then_some(())
        });
        Self {
            process,
            pid_file,
            count_file,
            _dir: dir,
        }
    }

    /// How many SIGHUPs arrived so far.
    pub fn count(&self) -> usize {
        std::fs::read_to_string(&self.count_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}
