//! `coffer-env` as the tests run it: the real binary with an environment of
//! exactly what a test gives it (nothing inherited), a token file, and a
//! PATH holding only `python3`: no shell, as in a distroless image.

use std::{ffi::OsStr, path::PathBuf, process::Command, sync::OnceLock};

use crate::{broker::BrokerProcess, process::binary, tokens::pod_token};

/// The real python3 binary (not a pyenv shim, which is a shell script).
pub fn python3() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .expect("python3 is needed by the coffer-env tests");
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        })
        .clone()
}

/// A directory for one `coffer-env` run: its token file and a `bin/`
/// holding `python3` alone, the run's whole PATH.
pub struct EnvDir {
    pub dir: tempfile::TempDir,
}

impl EnvDir {
    /// A fresh directory with the token of pod `pod` (of `shop/web`).
    pub fn new(pod: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(python3(), dir.path().join("bin/python3")).unwrap();
        std::fs::write(dir.path().join("token"), pod_token(pod)).unwrap();
        Self { dir }
    }

    /// `bin/`: python3 and nothing else.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `coffer-env ARGS` against `endpoint`, with only PATH (python3
    /// alone), COFFER_BROKER, COFFER_TOKEN_FILE and `vars` in its
    /// environment.
    pub fn command(
        &self,
        endpoint: &str,
        vars: &[(&str, &str)],
        args: &[impl AsRef<OsStr>],
    ) -> Command {
        let mut command = Command::new(binary("coffer-env"));
        command
            .env_clear()
            .env("PATH", self.bin())
            .env("COFFER_BROKER", endpoint)
            .env("COFFER_TOKEN_FILE", self.path("token"))
            .envs(vars.iter().copied())
            .args(args);
        command
    }

    /// Like [`Self::command`] against `broker`.
    pub fn against(
        &self,
        broker: &BrokerProcess,
        vars: &[(&str, &str)],
        args: &[impl AsRef<OsStr>],
    ) -> Command {
        self.command(&broker.endpoint, vars, args)
    }
}
