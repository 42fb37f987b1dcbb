//! `cofferctl versions`, `delete`, `undelete`, `destroy`, `rollback` and
//! `list`: a secret's versions and the secrets under a folder.

use std::process::ExitCode;

use coffer::Client;

use crate::{
    args::BrokerArgs,
    connect::connect,
    output::{Printer, say, timestamp},
};

/// Lists the versions of `path`, the current one first.
pub(crate) async fn list(
    out: Printer,
    path: String,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let list = connect(&broker).await?.versions(&path).await?;
    if out.json() {
        let versions: Vec<serde_json::Value> = list
            .versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version,
                    "deleted": v.state == coffer::operator::VersionState::Deleted,
                    "destroyed": v.state == coffer::operator::VersionState::Destroyed,
                    "createdAt": timestamp(v.created_at),
                })
            })
            .collect();
        out.value(&serde_json::json!({
            "path": path,
            "currentVersion": list.current,
            "versions": versions,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    say!(out, "current version: {}", list.current);
    for v in list.versions {
        let state = match v.state {
            coffer::operator::VersionState::Destroyed => "destroyed",
            coffer::operator::VersionState::Deleted => "deleted",
            _ => "live",
        };
        say!(
            out,
            "  v{:<6} {state}  created {}",
            v.version,
            timestamp(v.created_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Makes `to_version` current again, as a new version.
pub(crate) async fn rollback(
    out: Printer,
    path: String,
    to_version: u64,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let client = connect(&broker).await?;
    let version = match client.rollback(&path, to_version).await {
        Ok(version) => version,
        Err(error) if error.code() == Some(coffer::Code::NotFound) => {
            return Err(missing_version(&client, &path, to_version, error).await);
        }
        Err(error) => return Err(error.into()),
    };
    if out.json() {
        out.value(
            &serde_json::json!({"path": path, "fromVersion": to_version, "version": version}),
        );
    } else {
        say!(
            out,
            "{path}: version {to_version} is current again as version {version}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists the secrets under `folder` the caller may list.
pub(crate) async fn secrets(
    out: Printer,
    folder: String,
    broker: BrokerArgs,
) -> anyhow::Result<ExitCode> {
    let names = connect(&broker).await?.list_secrets(&folder).await?;
    if out.json() {
        out.value(&serde_json::json!({"folder": folder, "names": names}));
    } else {
        for name in names {
            say!(out, "{name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes, undeletes or destroys `versions` of `path` (none: the current
/// one) and says which, as `done`.
pub(crate) async fn change(
    out: Printer,
    broker: &BrokerArgs,
    action: coffer::operator::VersionAction,
    path: &str,
    versions: Vec<u64>,
    done: &str,
) -> anyhow::Result<ExitCode> {
    let which = if versions.is_empty() {
        "the current version".to_string()
    } else {
        let list: Vec<String> = versions.iter().map(u64::to_string).collect();
        format!("versions {}", list.join(", "))
    };
    connect(broker)
        .await?
        .change_versions(action, path, versions.clone())
        .await?;
    if out.json() {
        out.value(&serde_json::json!({"path": path, done: versions}));
    } else {
        say!(out, "{path}: {which} {done}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A rollback to a version the store no longer keeps: say which versions
/// exist and why older ones are gone (the error's exit code is kept).
async fn missing_version(
    client: &Client,
    path: &str,
    wanted: u64,
    error: coffer::Error,
) -> anyhow::Error {
    let Ok(list) = client.versions(path).await else {
        return error.into();
    };
    let kept: Vec<u64> = list
        .versions
        .iter()
        .filter(|v| v.state == coffer::operator::VersionState::Live)
        .map(|v| v.version)
        .collect();
    let range = match (kept.first(), kept.last()) {
        (Some(first), Some(last)) if first == last => format!("version {first}"),
        (Some(first), Some(last)) => format!("versions {first} to {last}"),
        _ => "no readable version".to_string(),
    };
    let why = match list.versions.first() {
        Some(oldest) if wanted < oldest.version => {
            "; older versions were dropped: Vault's KV v2 keeps `max_versions` per secret (10 by default)"
                .to_string()
        }
        _ => String::new(),
    };
    anyhow::Error::new(error).context(format!(
        "{path} has no version {wanted} to roll back to: it keeps {range} (current {}){why}",
        list.current
    ))
}
