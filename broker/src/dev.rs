//! `coffer-broker dev`: the whole system on one machine, no Vault needed.
//!
//! A broker on the embedded dev store (seeded with a demo secret), a fresh
//! signing key with workload and operator tokens, and a real `coffer-sidecar`
//! process writing the demo secret to a tmpfs directory under /dev/shm.

use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use coffer_broker::{
    app::{App, AppConfig, AuthSource, PolicySource, StoreSource},
    auth::{
        jwt::{JwtVerifier, KeySet, VerifierConfig},
        signer::DevSigner,
    },
    path::SecretName,
    policy::Policy,
    server::ListenAddr,
    store::{SecretStore, SecretWrite, dev::DevStore},
};
use coffer_proto::{SecretBytes, SecretData};
use coffer_runtime::shutdown_signal;
use std::io::Write;

const ISSUER: &str = "https://coffer-dev.local";
const AUDIENCE: &str = "coffer";

#[derive(clap::Args)]
pub(crate) struct DevArgs {
    /// The demo directory (must be on tmpfs); removed on exit.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the broker listens.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: ListenAddr,
}

const POLICY: &str = r#"
rules:
  - name: demo-app-reads-demo
    subjects: [{namespace: demo, serviceAccount: app}]
    paths: ["demo/*"]
    capabilities: [read, watch]
  - name: demo-operator-manages-demo
    subjects: [{namespace: demo, serviceAccount: operator}]
    paths: ["demo/*"]
    capabilities: [read, write, rollback, list, status]
"#;

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/coffer-demo-{}", std::process::id())));
    let sidecar_bin = sibling_binary("coffer-sidecar")?;
    let cofferctl = sibling_binary("cofferctl").unwrap_or_else(|_| PathBuf::from("cofferctl"));

    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {} (does /dev/shm exist?)", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());

    // The issuer: a key that lives only in this process.
    let signer = DevSigner::generate(ISSUER)?;
    let keys = KeySet::from_jwks_json(signer.jwks_json().as_bytes())?;
    let authn = JwtVerifier::new(VerifierConfig::new(ISSUER, AUDIENCE), keys);

    let store = Arc::new(DevStore::in_memory());
    store
        .put(
            &SecretName::parse("demo/greeting")?,
            SecretWrite::new(
                SecretData::Bytes(SecretBytes::from(&b"hello from coffer\n"[..])),
                "text/plain",
            ),
        )
        .await?;
    let mut config = AppConfig::new(
        AuthSource::Ready(Arc::new(authn)),
        PolicySource::Fixed(Policy::from_yaml(POLICY)?),
        StoreSource::Ready(store),
    );
    config.listen = args.listen;
    config.addr_file = Some(dir.join("broker.addr"));
    // The demo has always served plaintext wherever it was asked to listen.
    config.insecure = true;
    let app = App::build(config).await.map_err(super::failed)?;

    let ttl = Duration::from_secs(24 * 3600);
    let app_token = dir.join("app.token");
    let operator_token = dir.join("operator.token");
    write_private(
        &app_token,
        signer
            .mint(AUDIENCE, "demo", "app", Some("demo-app-0"), ttl)?
            .as_bytes(),
    )?;
    write_private(
        &operator_token,
        signer
            .mint(AUDIENCE, "demo", "operator", None, ttl)?
            .as_bytes(),
    )?;

    let listeners = app.bind().await.map_err(super::failed)?;
    let addr = listeners.grpc.address()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(app.run(listeners, stop.clone().cancelled_owned()));
    let endpoint = if addr.starts_with("unix:") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };

    let secrets_dir = dir.join("secrets");
    let config = dir.join("sidecar.yaml");
    write_private(
        &config,
        format!(
            "broker: {endpoint}\ntokenFile: {}\noutputDir: {}\nsecrets:\n  - path: demo/greeting\n    file: greeting\n    mode: \"0400\"\n",
            app_token.display(),
            secrets_dir.display()
        )
        .as_bytes(),
    )?;
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&secrets_dir)?;
    let mut sidecar = tokio::process::Command::new(&sidecar_bin)
        .arg("--config")
        .arg(&config)
        .kill_on_drop(true)
        // Its own process group: a terminal's Ctrl-C reaches only this
        // process, which then stops the sidecar in order (below).
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", sidecar_bin.display()))?;

    println!(
        "\nCoffer is running.\n\
         \n  broker   {endpoint}   (embedded dev store, policy: demo/app reads demo/*)\
         \n  sidecar  pid {}   writing into {}\
         \n\nThe demo secret (mode 0400, on tmpfs):\
         \n  cat {}/greeting\
         \n\nChange it, and watch the file follow:\
         \n  printf 'rotated at %s\\n' \"$(date)\" | {} put demo/greeting --broker {endpoint} --token-file {}\
         \n  {} status demo/greeting --broker {endpoint} --token-file {}\
         \n\nPress Ctrl-C to stop; {} is removed on exit.\n",
        sidecar.id().unwrap_or(0),
        secrets_dir.display(),
        secrets_dir.display(),
        cofferctl.display(),
        operator_token.display(),
        cofferctl.display(),
        operator_token.display(),
        dir.display(),
    );

    let result = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        status = sidecar.wait() => Err(anyhow::anyhow!("the sidecar exited early: {status:?}")),
    };
    // Stop the sidecar first (SIGTERM, then kill), then the broker.
    if let Some(pid) = sidecar.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(5), sidecar.wait())
            .await
            .is_err()
        {
            let _ = sidecar.kill().await;
        }
    }
    stop.cancel();
    server.await??;
    println!("Stopped; removed {}.", dir.display());
    result
}

/// A binary installed beside this one (cargo puts workspace binaries together).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let candidate = me.with_file_name(name);
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "{} not found next to {}: build every binary first (cargo build --workspace --bins)",
            name,
            me.display()
        )
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
