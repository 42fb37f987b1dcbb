//! The KV engine calls, v1 and v2: read, metadata, write, the version
//! changes and listing. No cache here: the caller keeps its books.
//!
//! vaultrs parses responses into `serde_json::Value`, which is not
//! zeroized; values are moved out of it into zeroizing buffers without a
//! further copy.

use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::Ordering,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use coffer_proto::{SecretBytes, SecretData};
use vaultrs::{
    api::kv2::{
        requests::{
            ReadSecretMetadataRequest, ReadSecretRequest, SetSecretRequest, SetSecretRequestOptions,
        },
        responses::ReadSecretMetadataResponse,
    },
    error::ClientError,
};

use super::{
    backend::{Backend, CallError},
    config::MountConfig,
    consistency,
};

/// A request vaultrs' builders refused, as vaultrs reports errors.
fn unbuildable(e: impl std::fmt::Display) -> ClientError {
    ClientError::APIError {
        code: 0,
        errors: vec![e.to_string()],
    }
}
use crate::store::{
    SecretWrite, StoreError, StoredSecret, VersionChange, VersionInfo, VersionList,
};

/// The key under which opaque bytes are stored in a Vault map.
pub const BYTES_KEY: &str = "value";

/// The KV mount serving `path` and the path inside it. A leased path has
/// one credential per holder: only the leases serve it.
pub(super) fn route(vault: &Backend, path: &str) -> Result<(MountConfig, String), StoreError> {
    match vault.config.route(path) {
        Some((m, _)) if m.is_leased() => {
            Err(StoreError::Unsupported("this operation on a leased path"))
        }
        Some((m, p)) => Ok((m.clone(), p)),
        None => Err(StoreError::NotFound),
    }
}

/// Reads a version of `path` (or the current one) from Vault.
pub(super) async fn read(
    vault: &Backend,
    path: &str,
    version: Option<u64>,
) -> Result<StoredSecret, StoreError> {
    let (mount, inner_path) = route(vault, path)?;
    vault.secret_reads.fetch_add(1, Ordering::Relaxed);
    if mount.kv == 1 {
        return read_kv1(vault, &mount, &inner_path, version).await;
    }
    let name = mount.mount.clone();
    let result = vault
        .call(|c| {
            let (name, p) = (name.clone(), inner_path.clone());
            async move {
                let request = ReadSecretRequest::builder()
                    .mount(name)
                    .path(p)
                    .version(version)
                    .build()
                    .map_err(unbuildable)?;
                consistency::exec(&c, request, &vault.consistency, false).await
            }
        })
        .await;
    match result {
        Ok(response) => {
            let meta = response.metadata;
            if meta.destroyed || !meta.deletion_time.is_empty() || response.data.is_null() {
                return Err(StoreError::VersionDeleted(meta.version));
            }
            Ok(StoredSecret {
                version: meta.version,
                data: to_secret_data(response.data)?,
                content_type: String::new(),
                created_at: parse_time(&meta.created_time),
                ttl_hint: None,
                labels: meta
                    .custom_metadata
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            })
        }
        Err(CallError::NotFound) => Err(explain_missing(vault, path, version).await),
        Err(e) => Err(e.into()),
    }
}

/// A 404 on a KV v2 read: absent path, absent version, or deleted.
async fn explain_missing(vault: &Backend, path: &str, version: Option<u64>) -> StoreError {
    let meta = match metadata(vault, path).await {
        Ok(Some(meta)) => meta,
        Ok(None) => return StoreError::NotFound,
        Err(e) => return e,
    };
    let wanted = version.unwrap_or(meta.current_version);
    match meta.versions.get(&wanted.to_string()) {
        Some(v) if v.destroyed || !v.deletion_time.is_empty() => StoreError::VersionDeleted(wanted),
        _ if version.is_none() => StoreError::NotFound,
        _ => StoreError::VersionNotFound(wanted),
    }
}

async fn read_kv1(
    vault: &Backend,
    mount: &MountConfig,
    inner_path: &str,
    version: Option<u64>,
) -> Result<StoredSecret, StoreError> {
    let name = mount.mount.clone();
    let response = vault
        .call(|c| {
            let (name, p) = (name.clone(), inner_path.to_string());
            async move { vaultrs::kv1::get_raw(&*c, &name, &p).await }
        })
        .await?;
    // KV v1 keeps one version; the path exists, the version does not.
    if let Some(v) = version.filter(|&v| v != 1) {
        return Err(StoreError::VersionNotFound(v));
    }
    Ok(StoredSecret {
        version: 1,
        data: to_secret_data(response.data)?,
        content_type: String::new(),
        // KV v1 keeps no creation time.
        created_at: UNIX_EPOCH,
        ttl_hint: None,
        labels: BTreeMap::new(),
    })
}

/// KV v2 metadata; `None` when the path does not exist.
pub(super) async fn metadata(
    vault: &Backend,
    path: &str,
) -> Result<Option<ReadSecretMetadataResponse>, StoreError> {
    let (mount, inner_path) = route(vault, path)?;
    if mount.kv != 2 {
        return Err(StoreError::Unsupported("metadata on a KV v1 mount"));
    }
    let name = mount.mount.clone();
    match vault
        .call(|c| {
            let (name, p) = (name.clone(), inner_path.clone());
            async move {
                let request = ReadSecretMetadataRequest::builder()
                    .mount(name)
                    .path(p)
                    .build()
                    .map_err(unbuildable)?;
                consistency::exec(&c, request, &vault.consistency, false).await
            }
        })
        .await
    {
        Ok(meta) => Ok(Some(meta)),
        Err(CallError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The current version of `path` (0 when absent). A KV v1 path is read
/// whole: it keeps no metadata.
pub(super) async fn current_version(vault: &Backend, path: &str) -> Result<u64, StoreError> {
    let (mount, _) = route(vault, path)?;
    if mount.kv == 1 {
        return match read(vault, path, None).await {
            Ok(_) => Ok(1),
            Err(StoreError::NotFound) => Ok(0),
            Err(e) => Err(e),
        };
    }
    Ok(metadata(vault, path)
        .await?
        .map_or(0, |m| m.current_version))
}

/// What KV v1 knows of a path's versions: one, and no labels.
pub(super) fn kv1_version_list() -> VersionList {
    VersionList {
        current: 1,
        versions: vec![VersionInfo {
            version: 1,
            created_at: UNIX_EPOCH,
            deleted: false,
            destroyed: false,
        }],
        labels: BTreeMap::new(),
    }
}

/// The current version and every version's facts of a KV v2 path, with
/// its labels, from the metadata alone.
pub(super) async fn version_list(vault: &Backend, path: &str) -> Result<VersionList, StoreError> {
    let meta = metadata(vault, path).await?.ok_or(StoreError::NotFound)?;
    let mut infos: Vec<VersionInfo> = meta
        .versions
        .iter()
        .filter_map(|(n, v)| {
            Some(VersionInfo {
                version: n.parse().ok()?,
                created_at: parse_time(&v.created_time),
                deleted: !v.deletion_time.is_empty(),
                destroyed: v.destroyed,
            })
        })
        .collect();
    infos.sort_by_key(|v| v.version);
    Ok(VersionList {
        current: meta.current_version,
        versions: infos,
        // KV v2 keeps labels per secret, as custom_metadata.
        labels: meta
            .custom_metadata
            .map(|m| m.into_iter().collect())
            .unwrap_or_default(),
    })
}

/// Writes a new version; its number. `known` is the newest version the
/// store has seen, the answer to a check-and-set Vault cannot even take.
pub(super) async fn write(
    vault: &Backend,
    path: &str,
    write: &SecretWrite,
    known: u64,
) -> Result<u64, StoreError> {
    let (mount, inner_path) = route(vault, path)?;
    let text = text_map(&write.data)?;
    let name = mount.mount.clone();
    if mount.kv == 1 {
        if write.cas.is_some() {
            return Err(StoreError::Unsupported("check-and-set on a KV v1 mount"));
        }
        let map: HashMap<&str, &str> = text.iter().map(|(k, v)| (*k, *v)).collect();
        vault
            .call(|c| {
                let (name, p, map) = (name.clone(), inner_path.clone(), &map);
                async move { vaultrs::kv1::set(&*c, &name, &p, map).await }
            })
            .await?;
        return Ok(1);
    }
    let cas = match write.cas {
        Some(cas) => {
            Some(u32::try_from(cas).map_err(|_| StoreError::CasMismatch { current: known })?)
        }
        None => None,
    };
    let result = vault
        .call(|c| {
            let (name, p, text) = (name.clone(), inner_path.clone(), &text);
            async move {
                let data = serde_json::to_value(text)
                    .map_err(|source| ClientError::JsonParseError { source })?;
                let mut request = SetSecretRequest::builder();
                request.mount(name).path(p).data(data);
                if let Some(cas) = cas {
                    request.options(SetSecretRequestOptions { cas });
                }
                let request = request.build().map_err(unbuildable)?;
                consistency::exec(&c, request, &vault.consistency, true).await
            }
        })
        .await;
    let version = match result {
        Ok(meta) => meta.version,
        Err(CallError::Other(400, _)) if cas.is_some() => {
            let current = metadata(vault, path)
                .await?
                .map_or(0, |m| m.current_version);
            return Err(StoreError::CasMismatch { current });
        }
        Err(e) => return Err(e.into()),
    };
    // Labels given replace the secret's custom_metadata; a write without
    // labels keeps the stored ones (e.g. a rotation spec).
    if !write.labels.is_empty() {
        let labels: HashMap<String, String> = write.labels.clone().into_iter().collect();
        vault
            .call(|c| {
                let (name, p, labels) = (name.clone(), inner_path.clone(), labels.clone());
                async move {
                    vaultrs::kv2::set_metadata(
                        &*c,
                        &name,
                        &p,
                        Some(
                            vaultrs::api::kv2::requests::SetSecretMetadataRequest::builder()
                                .custom_metadata(labels),
                        ),
                    )
                    .await
                }
            })
            .await?;
    }
    Ok(version)
}

/// Deletes, undeletes or destroys KV v2 versions (empty: the current one).
pub(super) async fn change_versions(
    vault: &Backend,
    path: &str,
    versions: &[u64],
    change: VersionChange,
) -> Result<(), StoreError> {
    let (mount, inner_path) = route(vault, path)?;
    if mount.kv != 2 {
        return Err(StoreError::Unsupported("versions on a KV v1 mount"));
    }
    let versions = if versions.is_empty() {
        let current = metadata(vault, path).await?.ok_or(StoreError::NotFound)?;
        vec![current.current_version]
    } else {
        versions.to_vec()
    };
    let name = mount.mount.clone();
    vault
        .call(|c| {
            let (name, p, versions) = (name.clone(), inner_path.clone(), versions.clone());
            async move {
                match change {
                    VersionChange::Delete => {
                        vaultrs::kv2::delete_versions(&*c, &name, &p, versions).await
                    }
                    VersionChange::Undelete => {
                        vaultrs::kv2::undelete_versions(&*c, &name, &p, versions).await
                    }
                    VersionChange::Destroy => {
                        vaultrs::kv2::destroy_versions(&*c, &name, &p, versions).await
                    }
                }
            }
        })
        .await?;
    Ok(())
}

/// The names under the folder `path`, as Vault lists them, waiting for
/// each turn at the request ceiling at most `max_wait`. Folders above the
/// mounts (the root, most often) are known from the configuration:
/// listed without a Vault request. A listing is never cached.
pub(super) async fn list(
    vault: &Backend,
    path: &str,
    max_wait: Option<Duration>,
) -> Result<Vec<String>, StoreError> {
    let above = vault.config.names_above_mounts(path);
    let (mount, inner_path) = match route(vault, path) {
        Ok(route) => route,
        Err(_) if !above.is_empty() => return Ok(above),
        Err(error) => return Err(error),
    };
    let name = mount.mount.clone();
    let result = if mount.kv == 2 {
        vault
            .call_within(max_wait, |c| {
                let (name, p) = (name.clone(), inner_path.clone());
                async move { vaultrs::kv2::list(&*c, &name, &p).await }
            })
            .await
    } else {
        vault
            .call_within(max_wait, |c| {
                let (name, p) = (name.clone(), inner_path.clone());
                async move {
                    vaultrs::kv1::list(&*c, &name, &p)
                        .await
                        .map(|r| r.data.keys)
                }
            })
            .await
    };
    if matches!(result, Err(CallError::Throttled)) {
        tracing::debug!(path, "a listing waited too long for the request ceiling");
        crate::metrics::backend_throttled();
    }
    let mut keys = match result {
        Ok(keys) => keys,
        Err(CallError::NotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    keys.extend(above);
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Moves a Vault KV map out of JSON into zeroizing buffers. Strings are
/// taken as they are; other JSON values keep their JSON text.
pub(super) fn to_secret_data(value: serde_json::Value) -> Result<SecretData, StoreError> {
    let serde_json::Value::Object(map) = value else {
        return Err(StoreError::Internal(
            "Vault returned a non-map secret".into(),
        ));
    };
    let mut out = BTreeMap::new();
    for (key, value) in map {
        let bytes = match value {
            serde_json::Value::String(s) => s.into_bytes(),
            other => serde_json::to_vec(&other)
                .map_err(|_| StoreError::Internal("unencodable Vault value".into()))?,
        };
        out.insert(key, SecretBytes::new(bytes));
    }
    Ok(SecretData::Map(out))
}

/// Borrows a value as a map of texts for writing (Vault KV holds text).
fn text_map(data: &SecretData) -> Result<BTreeMap<&str, &str>, StoreError> {
    fn text(b: &SecretBytes) -> Result<&str, StoreError> {
        std::str::from_utf8(b.expose())
            .map_err(|_| StoreError::Unsupported("binary values in Vault KV (text only)"))
    }
    match data {
        SecretData::Bytes(b) => Ok(BTreeMap::from([(BYTES_KEY, text(b)?)])),
        SecretData::Map(m) => m.iter().map(|(k, v)| Ok((k.as_str(), text(v)?))).collect(),
    }
}

fn parse_time(text: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(text).unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_zeroizing_bytes_and_writes_need_text() {
        let data = to_secret_data(serde_json::json!({"user": "u", "port": 5432})).unwrap();
        assert_eq!(data.key("user").unwrap().expose(), b"u");
        assert_eq!(data.key("port").unwrap().expose(), b"5432");
        assert!(to_secret_data(serde_json::json!("scalar")).is_err());
        let bytes = SecretData::Bytes(SecretBytes::new(vec![0xff, 0xfe]));
        assert!(matches!(text_map(&bytes), Err(StoreError::Unsupported(_))));
        let text = SecretData::Bytes(SecretBytes::new(b"hi".to_vec()));
        assert_eq!(text_map(&text).unwrap().get(BYTES_KEY), Some(&"hi"));
    }
}
