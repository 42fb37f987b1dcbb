//! Helpers for operators' end-to-end tests: `cofferctl` runs with a token
//! per identity, a broker on OpenBao, pod-bound tokens, a tiny tmpfs.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use coffer_broker::auth::jwt::ProjectedClaims;

use crate::{
    AUDIENCE, BrokerProcess, ISSUER, Key, SidecarOptions, SidecarProcess, binary, mint,
    mint_claims,
    openbao::{OpenBao, ROOT_TOKEN},
};

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
        let mut child = Command::new(binary("cofferctl"))
            .env("COFFER_BROKER", &self.broker)
            .env("COFFER_TOKEN_FILE", &token)
            .env_remove("COFFER_CA_FILE")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
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

/// The flags of a broker on `bao`'s KV v2 mount `secret` for prefix `shop`,
/// with `extra_yaml` appended to its Vault configuration.
pub fn vault_args(bao: &OpenBao, extra_yaml: &str) -> Vec<String> {
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\n{extra_yaml}",
            token.display()
        ),
    );
    vec![
        "--store=vault".into(),
        "--vault-addr".into(),
        bao.addr.clone(),
        "--vault-config".into(),
        config.display().to_string(),
    ]
}

/// A broker with `policy` on `bao` (see [`vault_args`]).
pub fn vault_broker(bao: &OpenBao, policy: &str) -> BrokerProcess {
    let args = vault_args(bao, "");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    BrokerProcess::start_with(policy, &args)
}

/// A token of pod `pod` of `shop/web`, bound to the pod (name and uid).
pub fn pod_token(pod: &str) -> String {
    mint_claims(
        Key::Rsa,
        &ProjectedClaims::projected(
            ISSUER,
            AUDIENCE,
            "shop",
            "web",
            Some(pod),
            Duration::from_secs(3600),
        ),
    )
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
