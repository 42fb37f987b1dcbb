//! Cost as a pod's secrets grow: the real `coffer-sidecar` (from beside
//! the broker binary) for one pod with 1, 10 and 100 secrets against the
//! shipped broker: the time from its start until every file is written
//! (its readiness), and its resident memory then. Its output directory is
//! a fresh one under /dev/shm (a tmpfs, as in a pod).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::{
    grpc::connect_target,
    shipped::{Flags, Shipped},
    table::Row,
    target::process_rss,
    tokens::{Alg, Minter},
};

/// Starts per size, the figure the median of.
const STARTS: usize = 3;

/// The rows for each count of secrets in `sizes` (ascending).
pub(crate) async fn rows(
    broker_bin: &Path,
    log_level: &str,
    minter: &Minter,
    sizes: &[usize],
) -> anyhow::Result<Vec<Row>> {
    let sidecar_bin = broker_bin.with_file_name("coffer-sidecar");
    anyhow::ensure!(
        sidecar_bin.is_file(),
        "{} not found: build it (cargo build --release -p coffer-sidecar)",
        sidecar_bin.display()
    );
    let flags = Flags {
        tls: false,
        audit: false,
    };
    let broker = Shipped::start(broker_bin, flags, log_level, minter).await?;
    let largest = sizes.iter().copied().max().unwrap_or(1);
    let channel = connect_target(&broker).await?;
    for i in 0..largest {
        broker
            .put_at(&channel, &format!("bench/pod-secret-{i}"), 1)
            .await?;
    }
    let token = minter.mint(Alg::Rs256, "app", "app-7d9f8b6c5d-x2x4q")?;
    // One start first, so that no size pays for loading the binary.
    start_once(&sidecar_bin, &broker, &token, 1).await?;
    let mut rows = Vec::new();
    let mut base: Option<Duration> = None;
    for &n in sizes {
        let (mut times, mut rss) = (Vec::new(), Vec::new());
        for _ in 0..STARTS {
            let (time, bytes) = start_once(&sidecar_bin, &broker, &token, n).await?;
            times.push(time);
            rss.push(bytes);
        }
        let time = crate::stats::median(times);
        rss.sort_unstable();
        let rss = rss[rss.len() / 2];
        let base_time = *base.get_or_insert(time);
        rows.push(Row::Scale {
            label: format!("sidecar with {n} secrets: start to every file written"),
            value: format!("{:.1} ms", time.as_secs_f64() * 1e3),
            base: format!("{:.1} ms at {}", base_time.as_secs_f64() * 1e3, sizes[0]),
            ratio: time.as_secs_f64() / base_time.as_secs_f64().max(1e-12),
        });
        rows.push(Row::Scale {
            label: format!("sidecar with {n} secrets: RSS when ready"),
            value: format!("{:.1} MiB", rss as f64 / (1024.0 * 1024.0)),
            base: String::new(),
            ratio: f64::NAN,
        });
    }
    Ok(rows)
}

/// One sidecar start: the time until its `n` files exist, and its RSS then.
async fn start_once(
    binary: &Path,
    broker: &Shipped,
    token: &str,
    n: usize,
) -> anyhow::Result<(Duration, u64)> {
    use crate::target::Target;
    let dir = tempfile::tempdir()?;
    let out = tempfile::Builder::new()
        .prefix("coffer-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token)?;
    let mut yaml = format!(
        "broker: {}\ntokenFile: {}\noutputDir: {}\nsecrets:\n",
        broker.url(),
        token_file.display(),
        out.path().display()
    );
    for i in 0..n {
        yaml.push_str(&format!("  - path: bench/pod-secret-{i}\n    file: s{i}\n"));
    }
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(&config, yaml)?;
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let last = out.path().join(format!("s{}", n - 1));
    let deadline = started + Duration::from_secs(30);
    let result = loop {
        // Files appear in order of the list only by chance: check all.
        if last.exists() && (0..n).all(|i| out.path().join(format!("s{i}")).exists()) {
            break Ok((started.elapsed(), process_rss(child.id())));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "the sidecar exited ({status}) before it was ready"
            ));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("the sidecar was not ready within 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}
