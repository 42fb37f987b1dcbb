//! `cofferctl put`: a new version from KEY=VALUE pairs, files, a JSON
//! object or the bytes on stdin. Values are read into zeroizing buffers and
//! error messages name the argument's shape, never its value.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read},
    process::ExitCode,
};

use anyhow::Context;
use coffer::{SecretBytes, SecretData};
use zeroize::Zeroizing;

use crate::{
    args::PutArgs,
    cmd::rollout,
    connect::connect,
    output::{Printer, say},
};

/// Writes the new version, then follows its rollout with `--wait`.
pub(crate) async fn run(out: Printer, args: PutArgs) -> anyhow::Result<ExitCode> {
    let PutArgs {
        path,
        pairs,
        from_file,
        json,
        strip_newline,
        keep_newline,
        content_type,
        cas,
        wait,
        broker,
    } = args;
    let data = if json {
        let mut text = Zeroizing::new(Vec::new());
        std::io::stdin().read_to_end(&mut text)?;
        json_map(&text)?
    } else if !pairs.is_empty() || !from_file.is_empty() {
        pair_map(&pairs, &from_file)?
    } else {
        stdin_bytes(strip_newline || (!keep_newline && std::io::stdin().is_terminal()))?
    };
    let client = connect(&broker).await?;
    let put = coffer::operator::Put::new(&path, data)
        .content_type(content_type)
        .cas(cas);
    let version = client.put(put).await?;
    if out.json() {
        out.value(&serde_json::json!({"path": path, "version": version}));
    } else {
        say!(out, "{path}: version {version}");
    }
    if wait.wait {
        return rollout::wait_for_rollout(out, &client, &path, version, wait.timeout).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// The bytes on stdin as they are, less one trailing newline (`\n` or
/// `\r\n`) when `strip`.
fn stdin_bytes(strip: bool) -> anyhow::Result<SecretData> {
    let mut value = Zeroizing::new(Vec::new());
    std::io::stdin().read_to_end(&mut value)?;
    if strip && value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
    Ok(SecretData::Bytes(SecretBytes::new(std::mem::take(
        &mut *value,
    ))))
}

/// A map secret from `KEY=VALUE` pairs and `KEY=FILE` files.
fn pair_map(pairs: &[String], files: &[String]) -> anyhow::Result<SecretData> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let (key, value) = split_pair(pair, "KEY=VALUE")?;
        if map
            .insert(key.to_string(), SecretBytes::from(value.as_bytes()))
            .is_some()
        {
            anyhow::bail!("key {key:?} given twice");
        }
    }
    for spec in files {
        let (key, file) = split_pair(spec, "KEY=FILE")?;
        let bytes = Zeroizing::new(std::fs::read(file).with_context(|| format!("reading {file}"))?);
        if map
            .insert(key.to_string(), SecretBytes::from(&bytes[..]))
            .is_some()
        {
            anyhow::bail!("key {key:?} given twice");
        }
    }
    Ok(SecretData::Map(map))
}

/// Splits `KEY=REST`; the message names the argument's shape, never its value.
fn split_pair<'a>(text: &'a str, shape: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((key, rest)) if !key.is_empty() => Ok((key, rest)),
        _ => anyhow::bail!("expected {shape} (a non-empty key, then `=`)"),
    }
}

/// One JSON value of a map secret, kept in a zeroizing buffer: strings as
/// they are, numbers and booleans as their JSON text.
struct JsonValue(SecretBytes);

impl<'de> serde::Deserialize<'de> for JsonValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = JsonValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.as_bytes())))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<JsonValue, E> {
                Ok(JsonValue(SecretBytes::from(v.to_string().as_bytes())))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A map secret from a JSON object. Errors give the position, not the text.
fn json_map(text: &[u8]) -> anyhow::Result<SecretData> {
    let map: BTreeMap<String, JsonValue> = serde_json::from_slice(text).map_err(|e| {
        anyhow::anyhow!(
            "--json needs an object of strings, numbers or booleans on stdin (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    Ok(SecretData::Map(
        map.into_iter().map(|(k, v)| (k, v.0)).collect(),
    ))
}
