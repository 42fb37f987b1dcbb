//! `cofferctl` as the tests run it: once with raw arguments, `audit verify`
//! over a trail, or as a given identity against one broker with a token
//! file per identity.

use std::{
    ffi::{OsStr, OsString},
    io::Write,
    process::{Command, Stdio},
};

use crate::{broker::BrokerProcess, process::binary, tokens::Key, tokens::mint};

/// Runs `cofferctl` with `args`; returns its exit code and stdout.
pub fn cofferctl(args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> (i32, String) {
    let output = Command::new(binary("cofferctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Runs `cofferctl audit verify` with `args` (options, then the trail's
/// files oldest first); returns its exit code and stdout.
pub fn audit_verify(args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> (i32, String) {
    let args: Vec<OsString> = ["audit", "verify"]
        .into_iter()
        .map(OsString::from)
        .chain(args.into_iter().map(|a| a.as_ref().to_owned()))
        .collect();
    cofferctl(args)
}

/// Runs `cofferctl` with `args` and `stdin`; returns its exit code, stdout
/// and stderr.
pub fn cofferctl_with_input(
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    stdin: &[u8],
) -> (i32, String, String) {
    let mut command = Command::new(binary("cofferctl"));
    command.args(args);
    run_with_input(command, stdin)
}

fn run_with_input(mut command: Command, stdin: &[u8]) -> (i32, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A child that exits early (a usage error) may close stdin first.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cofferctl` against one broker, with a token file per identity.
pub struct Ctl {
    broker: String,
    dir: tempfile::TempDir,
}

impl Ctl {
    /// `cofferctl` against `broker`; `as_("ops/admin", ..)` runs as that
    /// service account.
    pub fn new(broker: &BrokerProcess) -> Self {
        Self {
            broker: broker.endpoint.clone(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs as `who` (`namespace/serviceaccount`) with `stdin`; returns the
    /// exit code, stdout and stderr.
    pub fn as_(&self, who: &str, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let (namespace, account) = who.split_once('/').unwrap();
        let token = self.dir.path().join(who.replace('/', "_"));
        if !token.exists() {
            std::fs::write(&token, mint(Key::Rsa, namespace, account)).unwrap();
        }
        // By environment: only the network commands take these flags, and
        // they take them after the subcommand.
        let mut command = Command::new(binary("cofferctl"));
        command
            .env("COFFER_BROKER", &self.broker)
            .env("COFFER_TOKEN_FILE", &token)
            .env_remove("COFFER_CA_FILE")
            .args(args);
        run_with_input(command, stdin)
    }

    /// Runs as the test operator `ops/admin`.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        self.as_("ops/admin", args, stdin)
    }

    /// Runs as `ops/admin` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let (code, out, err) = self.run(args, stdin);
        assert_eq!(code, 0, "cofferctl {args:?}: {out}{err}");
        out
    }
}
