//! `coffer.dev/proxy-<name>` → an entry of the sidecar's `proxies:`
//! (docs/proxy.md): the sidecar holds a credential and the app connects to
//! it on loopback with none.
//!
//! The value is the entry as the sidecar's configuration spells it, as a
//! YAML flow mapping, without `name` (the annotation's `<name>` is its name
//! and the label of its metrics):
//!
//! ```text
//! coffer.dev/proxy-db: "{protocol: postgres, listen: 127.0.0.1:5432, upstream: db.shop.svc:5432,
//!   path: shop/pg, tls: {caFile: /etc/coffer/ca/db-ca.crt, serverName: db.shop.svc}}"
//! ```
//!
//! One parser checks it, the sidecar's own (every field, loopback-only
//! `listen`, TLS for an upstream off the machine), after the checks here of
//! what only holds in a pod the injector makes: `listen` is a loopback
//! address (a Unix socket would need a volume shared with the app, which
//! the injector does not add), and `tls.caFile` is a key of the CA
//! ConfigMap, the one directory of files the sidecar sees, which the
//! injector then mounts ([`ca_keys`]).

use serde_json::{Map, Value, json};

use crate::{annotations::AnnotationError, pod::Annotations};

/// The annotation's prefix, after `coffer.dev/`.
pub const FIELD: &str = "proxy-";

/// The `proxies:` entries of the pod's `coffer.dev/proxy-<name>`
/// annotations, in the order of their names; `ca_dir` is where the CA
/// ConfigMap is mounted in the sidecar.
pub fn entries(annotations: &Annotations<'_>, ca_dir: &str) -> Result<Vec<Value>, AnnotationError> {
    let mut entries = std::collections::BTreeMap::new();
    for (key, value) in annotations.iter() {
        let Some(name) = key
            .strip_prefix("coffer.dev/")
            .and_then(|rest| rest.strip_prefix(FIELD))
        else {
            continue;
        };
        let bad = |reason: String| AnnotationError::BadValue {
            annotation: key.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(AnnotationError::Unknown(key.to_string()));
        }
        let mut entry: Map<String, Value> = match serde_norway::from_str(value) {
            Ok(Value::Object(entry)) => entry,
            _ => {
                return Err(bad(
                    "expected a mapping such as {protocol: postgres, listen: 127.0.0.1:5432, \
                     upstream: db.shop.svc:5432, path: shop/pg, tls: {serverName: db.shop.svc}}"
                        .into(),
                ));
            }
        };
        if entry.contains_key("name") {
            return Err(bad(format!(
                "`name` is the annotation's own ({name:?}): leave it out"
            )));
        }
        if let Some(listen) = entry.get("listen").and_then(Value::as_str)
            && listen.starts_with('/')
        {
            return Err(bad(format!(
                "listen {listen:?}: a Unix socket needs a volume shared with the app, which \
                 the injector does not add; use a loopback address such as 127.0.0.1:5432"
            )));
        }
        if let Some(ca) = entry.get("tls").and_then(|t| t.get("caFile")) {
            ca_key(ca, ca_dir).map_err(bad)?;
        }
        entry.insert("name".into(), json!(name));
        entries.insert(name.to_string(), Value::Object(entry));
    }
    Ok(entries.into_values().collect())
}

/// The keys of the CA ConfigMap that `entries` name in `tls.caFile`.
pub fn ca_keys(entries: &[Value], ca_dir: &str) -> Vec<String> {
    let mut keys: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get("tls")?.get("caFile"))
        .filter_map(|ca| ca_key(ca, ca_dir).ok())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// `<ca_dir>/<key>` → `key`, a ConfigMap key (`[-._a-zA-Z0-9]+`).
fn ca_key(ca: &Value, ca_dir: &str) -> Result<String, String> {
    let refuse = || {
        format!(
            "tls.caFile {ca}: the sidecar sees only the CA ConfigMap's files: add the \
             database's CA to that ConfigMap under a key of its own and name it \
             {ca_dir}/<key>, e.g. {ca_dir}/db-ca.crt"
        )
    };
    let key = ca
        .as_str()
        .and_then(|path| path.strip_prefix(ca_dir))
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(refuse)?;
    let valid = !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(key.to_string())
    } else {
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA_DIR: &str = "/etc/coffer/ca";

    fn parse(value: &str) -> Result<Vec<Value>, AnnotationError> {
        entries(
            &Annotations::from_pairs([("coffer.dev/proxy-db", value)]),
            CA_DIR,
        )
    }

    #[test]
    fn a_proxy_annotation_is_the_sidecars_entry_named_by_the_annotation() {
        let entries = parse(
            "{protocol: postgres, listen: 127.0.0.1:5432, upstream: db.shop.svc:5432, path: shop/pg, tls: {caFile: /etc/coffer/ca/db-ca.crt, serverName: db.shop.svc}}",
        )
        .unwrap();
        assert_eq!(
            entries,
            [json!({
                "name": "db", "protocol": "postgres", "listen": "127.0.0.1:5432",
                "upstream": "db.shop.svc:5432", "path": "shop/pg",
                "tls": {"caFile": "/etc/coffer/ca/db-ca.crt", "serverName": "db.shop.svc"}
            })]
        );
        assert_eq!(ca_keys(&entries, CA_DIR), ["db-ca.crt"]);
        let http = parse(
            "{protocol: http, listen: 127.0.0.1:8081, upstream: https://api.example, path: shop/api, auth: {type: bearer}}",
        )
        .unwrap();
        assert_eq!(http[0]["upstream"], "https://api.example");
    }

    #[test]
    fn what_cannot_work_in_an_injected_pod_is_refused_with_the_reason() {
        for (value, why) in [
            ("postgres", "expected a mapping"),
            (
                "{name: x, protocol: postgres}",
                "`name` is the annotation's own",
            ),
            (
                "{listen: /run/pg/.s.PGSQL.5432}",
                "a Unix socket needs a volume",
            ),
            (
                "{tls: {caFile: /etc/ssl/db.pem}}",
                "only the CA ConfigMap's files",
            ),
            (
                "{tls: {caFile: /etc/coffer/ca/../x}}",
                "only the CA ConfigMap's files",
            ),
            (
                "{tls: {caFile: /etc/coffer/ca/}}",
                "only the CA ConfigMap's files",
            ),
        ] {
            let error = parse(value).unwrap_err();
            assert!(
                matches!(&error, AnnotationError::BadValue { annotation, .. } if annotation == "coffer.dev/proxy-db"),
                "{value}: {error}"
            );
            assert!(error.to_string().contains(why), "{value}: {error}");
        }
    }
}
