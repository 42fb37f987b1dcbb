//! `cofferctl rotate`, `status` and `--wait`: a new generated value, and the
//! rollout of the current version to the workloads watching it (N/M
//! applied, then one line per workload).

use std::{process::ExitCode, time::Duration};

use coffer::Client;

use crate::{
    args::{BrokerArgs, RotateArgs},
    connect::connect,
    exit,
    output::{Printer, say},
    status::{print_status, status_json},
};

/// How often `--wait` asks for the rollout's status.
const POLL: Duration = Duration::from_millis(250);

/// Has the broker generate a new value, then follows its rollout with `--wait`.
pub(crate) async fn rotate(out: Printer, args: RotateArgs) -> anyhow::Result<ExitCode> {
    let RotateArgs {
        path,
        key,
        length,
        alphabet,
        encoding,
        wait,
        broker,
    } = args;
    let mut rotate = coffer::operator::Rotate::new(&path);
    if let Some(length) = length {
        rotate = rotate.length(length);
    }
    if let Some(alphabet) = alphabet {
        rotate = rotate.alphabet(alphabet);
    }
    if let Some(encoding) = encoding {
        rotate = rotate.encoding(encoding.parse()?);
    }
    if let Some(key) = key {
        rotate = rotate.key(key);
    }
    let client = connect(&broker).await?;
    let coffer::operator::Rotated { version, key, .. } = client.rotate_detailed(rotate).await?;
    if out.json() {
        out.value(&serde_json::json!({"path": path, "version": version, "key": key}));
    } else {
        // Which key changed, so an operator sees at once whether the
        // value they meant to replace was replaced.
        match &key {
            Some(key) => say!(out, "{path}: rotated to version {version} (key {key})"),
            None => say!(
                out,
                "{path}: rotated to version {version} (the whole value)"
            ),
        }
    }
    if wait.wait {
        return wait_for_rollout(out, &client, &path, version, wait.timeout).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows the rollout of the current version: exit 0 when every watcher
/// applied it, 1 when any failed or is pending.
pub(crate) async fn status(
    out: Printer,
    path: String,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let status = connect(&broker).await?.status(&path).await?;
    if out.json() {
        out.value(&status_json(&path, &status));
    } else {
        print_status(out, &path, &status);
    }
    let done = status.failed == 0 && status.pending == 0;
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit::FAILURE)
    })
}

/// `--wait`: a progress bar of applied/expected until every watcher applied
/// `version` (exit 0), any failed (exit 1), or `timeout` passed (exit 1).
pub(crate) async fn wait_for_rollout(
    out: Printer,
    client: &Client,
    path: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{path} v{version}"));
    let until = tokio::time::Instant::now() + timeout;
    loop {
        let status = client.status(path).await?;
        bar.set_length(u64::from(status.expected));
        bar.set_position(u64::from(status.applied));
        let current = status.current_version == version;
        if !current && status.current_version > version {
            bar.abandon();
            eprintln!(
                "cofferctl: {path} moved on to version {} meanwhile",
                status.current_version
            );
            print_status(out, path, &status);
            return Ok(ExitCode::from(exit::FAILURE));
        }
        if current && status.failed > 0 {
            bar.abandon();
            print_status(out, path, &status);
            eprintln!(
                "cofferctl: {} workload(s) failed to apply version {version}",
                status.failed
            );
            return Ok(ExitCode::from(exit::FAILURE));
        }
        if current && status.pending == 0 {
            bar.finish();
            print_status(out, path, &status);
            return Ok(ExitCode::SUCCESS);
        }
        if tokio::time::Instant::now() >= until {
            bar.abandon();
            print_status(out, path, &status);
            eprintln!(
                "cofferctl: timed out after {}",
                humantime::format_duration(timeout)
            );
            return Ok(ExitCode::from(exit::FAILURE));
        }
        tokio::time::sleep(POLL).await;
    }
}
