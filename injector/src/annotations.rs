//! Pod annotations → the sidecar's configuration.
//!
//! Per secret `<name>` (a DNS-label-like name chosen by the user):
//!
//! | annotation | meaning |
//! | ---------- | ------- |
//! | `coffer.dev/secret-<name>: shop/web/db#password` | the broker path (required) |
//! | `coffer.dev/file-<name>: db-password` | the file name (default `<name>`) |
//! | `coffer.dev/format-<name>: dotenv` | raw, json, dotenv, properties, yaml, template |
//! | `coffer.dev/mode-<name>: "0440"` | octal file mode (default `0400`) |
//! | `coffer.dev/template-<name>: "{{ password }}"` | inline template (implies `format: template`): each key of the secret is a variable (`path#key`: that key alone), all of them the map `secret` |
//! | `coffer.dev/action-<name>: "{signal: HUP, processName: app}"` | run when the file changes |
//!
//! A proxy `<name>` is `coffer.dev/proxy-<name>`: the sidecar's `proxies:`
//! entry as a YAML flow mapping ([`crate::proxies`]).
//!
//! and for the pod: `coffer.dev/inject: "true"`, `coffer.dev/action` (run once
//! per update), `coffer.dev/sidecar-mode: native | container | init-only`
//! (how the sidecar is added, see [`crate::mode`]; default: the injector's
//! `--sidecar-mode`), and the options of [`crate::options`] (containers,
//! mount paths, the sidecar's user, group and resources). vault-k8s's
//! annotations are translated into these first ([`crate::vault_k8s`]).
//!
//! A template is rendered once at admission, as the sidecar will render it
//! (see [`crate::template`]): one that cannot render is refused with the
//! reason, rather than admitted to a pod whose sidecar never turns ready.

use std::collections::BTreeMap;

use coffer_sidecar::config::{Config, Env};
use serde_json::{Map, Value, json};

use crate::{
    mode::SidecarMode,
    options::POD_KEYS,
    pod::{Annotations, Pod},
};

/// The opt-in label (objectSelector) and annotation.
pub const INJECT: &str = "coffer.dev/inject";
/// The annotation choosing the pod's [`SidecarMode`].
pub const SIDECAR_MODE: &str = "coffer.dev/sidecar-mode";
const PREFIX: &str = "coffer.dev/";

/// Why a pod's annotations cannot be turned into a sidecar.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnnotationError {
    /// An annotation under `coffer.dev/` that means nothing.
    #[error("unknown annotation {0:?}")]
    Unknown(String),
    /// `coffer.dev/inject` is neither "true" nor "false".
    #[error("{INJECT} must be \"true\" or \"false\", not {0:?}")]
    BadInject(String),
    /// `coffer.dev/sidecar-mode` names no mode.
    #[error("{SIDECAR_MODE} must be \"native\", \"container\" or \"init-only\", not {0:?}")]
    BadSidecarMode(String),
    /// Opted in, but no secret named.
    #[error(
        "no secrets: add coffer.dev/secret-<name>: <path> (or a proxy, coffer.dev/proxy-<name>)"
    )]
    NoSecrets,
    /// A per-secret annotation for a secret that is not declared.
    #[error("{0:?} names a secret that has no coffer.dev/secret-<name> annotation")]
    Orphan(String),
    /// vault-k8s annotations that are refused: each with what to write
    /// instead.
    #[error("{}", vault_k8s_refusals(.0))]
    VaultK8s(Vec<(String, String)>),
    /// An annotation value that does not parse.
    #[error("{annotation:?}: {reason}")]
    BadValue {
        /// The annotation.
        annotation: String,
        /// What is wrong.
        reason: String,
    },
    /// The sidecar refuses the resulting configuration.
    #[error("the sidecar configuration is invalid: {0}")]
    Invalid(String),
    /// A template the sidecar would fail to render, whatever the secret's
    /// values.
    #[error(
        "{annotation:?}: the template of file {file:?} cannot render: {reason}. Each key of the \
         secret is a variable of its own ({{{{ password }}}}; with path#key only that key), and \
         all of them are the map secret ({{{{ secret[\"db-password\"] }}}}); values are strings \
         (docs/sidecar.md, \"Templates\")"
    )]
    Template {
        /// The annotation holding the template.
        annotation: String,
        /// The file it renders.
        file: String,
        /// Why it cannot render (the error's kind and line; never a value).
        reason: String,
    },
}

fn vault_k8s_refusals(refusals: &[(String, String)]) -> String {
    refusals
        .iter()
        .map(|(annotation, instead)| format!("{annotation} is refused: {instead}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the injected sidecar finds things (fixed by the injected volumes).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The broker URL, e.g. `https://coffer-broker.coffer.svc:8443`.
    pub broker: String,
    /// Where the secrets volume is mounted, in the sidecar and the apps.
    pub output_dir: String,
    /// The projected token file.
    pub token_file: String,
    /// The broker's CA bundle.
    pub ca_file: String,
    /// The sidecar's admin endpoint (its startupProbe).
    pub admin_listen: String,
}

/// Whether the pod asks for injection (label or annotation).
pub fn wants_injection(pod: &Pod<'_>) -> Result<bool, AnnotationError> {
    let mut wants = false;
    let label = pod.coffer_labels().get(INJECT).map(|v| &**v);
    for value in [label, pod.annotations().get(INJECT)] {
        match value {
            None => {}
            Some("true") => wants = true,
            Some("false") => {}
            Some(other) => return Err(AnnotationError::BadInject(other.to_string())),
        }
    }
    Ok(wants)
}

/// The pod's sidecar mode: its `coffer.dev/sidecar-mode` annotation, or
/// `default` (the injector's `--sidecar-mode`) when it has none.
pub fn sidecar_mode(
    annotations: &Annotations<'_>,
    default: SidecarMode,
) -> Result<SidecarMode, AnnotationError> {
    match annotations.get(SIDECAR_MODE) {
        None => Ok(default),
        Some(name) => name
            .parse()
            .map_err(|_| AnnotationError::BadSidecarMode(name.to_string())),
    }
}

/// Builds the sidecar's YAML configuration from the pod's annotations,
/// checks it with the sidecar's own parser, and renders each template as
/// the sidecar will.
pub fn sidecar_config(
    annotations: &Annotations<'_>,
    layout: &Layout,
) -> Result<String, AnnotationError> {
    let mut secrets: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut per_secret: Vec<(String, &'static str, String, String)> = Vec::new();
    // The annotation each secret's template came from, by secret name.
    let mut templates: BTreeMap<String, String> = BTreeMap::new();
    let mut pod_action = None;
    for (key, value) in annotations.iter() {
        let key = key.to_string();
        let key = &key;
        let text = || value.to_string();
        let Some(rest) = key.strip_prefix(PREFIX) else {
            // vault-k8s's annotations are translated before (crate::vault_k8s).
            continue;
        };
        match rest {
            "inject" | "injected" | "sidecar-config" | "sidecar-mode" => continue,
            _ if crate::env::is_env_annotation(rest) => continue,
            "action" => {
                pod_action = Some(parse_action(key, &text())?);
                continue;
            }
            rest if POD_KEYS.contains(&rest) => continue,
            rest if rest.starts_with(crate::proxies::FIELD) => continue,
            _ => {}
        }
        let (field, name) = [
            "secret",
            "file",
            "format",
            "mode",
            "template",
            "action",
            "mount-path",
        ]
        .iter()
        .find_map(|f| {
            rest.strip_prefix(f)
                .and_then(|r| r.strip_prefix('-'))
                .map(|n| (*f, n))
        })
        .ok_or_else(|| AnnotationError::Unknown(key.clone()))?;
        if name.is_empty() {
            return Err(AnnotationError::Unknown(key.clone()));
        }
        if field == "secret" {
            secrets
                .entry(name.to_string())
                .or_default()
                .insert("path".into(), json!(text()));
        } else {
            per_secret.push((name.to_string(), field, text(), key.clone()));
        }
    }
    for (name, field, value, annotation) in per_secret {
        let spec = secrets
            .get_mut(&name)
            .ok_or_else(|| AnnotationError::Orphan(annotation.clone()))?;
        match field {
            "file" => {
                spec.insert("file".into(), json!(value));
            }
            "format" => {
                spec.insert("format".into(), json!(value));
            }
            "mode" => {
                spec.insert("mode".into(), json!(value));
            }
            "template" => {
                spec.insert("format".into(), json!("template"));
                spec.insert("template".into(), json!(value));
                templates.insert(name, annotation);
            }
            "action" => {
                spec.insert("action".into(), parse_action(&annotation, &value)?);
            }
            // The patch mounts the directory (crate::options).
            "mount-path" => {}
            _ => return Err(AnnotationError::Unknown(annotation)),
        }
    }
    let ca_dir = layout.ca_file.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let proxies = crate::proxies::entries(annotations, ca_dir)?;
    if secrets.is_empty() && proxies.is_empty() {
        return Err(AnnotationError::NoSecrets);
    }
    let names: Vec<String> = secrets.keys().cloned().collect();
    let secrets: Vec<Value> = secrets
        .into_iter()
        .map(|(name, mut spec)| {
            spec.entry("file").or_insert_with(|| json!(name));
            Value::Object(spec)
        })
        .collect();
    let mut config = json!({
        "broker": layout.broker,
        "caFile": layout.ca_file,
        "tokenFile": layout.token_file,
        "outputDir": layout.output_dir,
        "adminListen": layout.admin_listen,
        "secrets": secrets,
    });
    if let Some(action) = pod_action {
        config["action"] = action;
    }
    if !proxies.is_empty() {
        config["proxies"] = Value::Array(proxies);
    }
    let yaml =
        serde_norway::to_string(&config).map_err(|e| AnnotationError::Invalid(e.to_string()))?;
    let parsed =
        Config::parse(&yaml, &NoEnv).map_err(|e| AnnotationError::Invalid(e.to_string()))?;
    // The configuration lists the secrets in the order of their names.
    for (name, spec) in names.iter().zip(&parsed.secrets) {
        if let Err(reason) = crate::template::check(spec) {
            return Err(AnnotationError::Template {
                annotation: templates.get(name).cloned().unwrap_or_default(),
                file: spec.file.as_str().to_string(),
                reason,
            });
        }
    }
    Ok(yaml)
}

/// No environment overrides: the configuration is exactly what was generated.
struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _: &str) -> Option<String> {
        None
    }
}

fn parse_action(annotation: &str, text: &str) -> Result<Value, AnnotationError> {
    let value: Value = serde_norway::from_str(text).map_err(|e| AnnotationError::BadValue {
        annotation: annotation.to_string(),
        reason: format!("expected a mapping such as {{signal: HUP, processName: app}}: {e}"),
    })?;
    if !value.is_object() {
        return Err(AnnotationError::BadValue {
            annotation: annotation.to_string(),
            reason: "expected a mapping such as {signal: HUP, processName: app}".into(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            broker: "https://coffer-broker.coffer.svc:8443".into(),
            output_dir: "/coffer/secrets".into(),
            token_file: "/var/run/secrets/coffer/token".into(),
            ca_file: "/etc/coffer/ca/ca.crt".into(),
            admin_listen: "0.0.0.0:8099".into(),
        }
    }

    fn config(pairs: &[(&str, &str)]) -> Result<Value, AnnotationError> {
        sidecar_config(&annotations(pairs), &layout()).map(|y| serde_norway::from_str(&y).unwrap())
    }

    fn secret(pairs: &[(&str, &str)]) -> Value {
        config(pairs).unwrap()["secrets"][0].clone()
    }

    #[test]
    fn secret_names_the_path_and_the_default_file() {
        let s = secret(&[("coffer.dev/secret-db", "shop/web/db#password")]);
        assert_eq!(s, json!({"path": "shop/web/db#password", "file": "db"}));
    }

    #[test]
    fn file_names_the_file() {
        let s = secret(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/file-db", "db-password"),
        ]);
        assert_eq!(s["file"], "db-password");
    }

    #[test]
    fn format_sets_the_format() {
        let s = secret(&[
            ("coffer.dev/secret-db", "shop/web/db"),
            ("coffer.dev/format-db", "dotenv"),
        ]);
        assert_eq!(s["format"], "dotenv");
    }

    #[test]
    fn mode_sets_the_mode() {
        let s = secret(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/mode-db", "0440"),
        ]);
        assert_eq!(s["mode"], "0440");
    }

    #[test]
    fn template_sets_an_inline_template() {
        let s = secret(&[
            ("coffer.dev/secret-db", "shop/web/db"),
            (
                "coffer.dev/template-db",
                "url=postgres://app:{{ password }}@db",
            ),
        ]);
        assert_eq!(s["format"], "template");
        assert_eq!(s["template"], "url=postgres://app:{{ password }}@db");
    }

    #[test]
    fn action_per_file_and_per_pod() {
        let c = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/action-db", "{signal: HUP, processName: app}"),
            (
                "coffer.dev/action",
                "{post: 'http://127.0.0.1:8080/reload'}",
            ),
        ])
        .unwrap();
        assert_eq!(
            c["secrets"][0]["action"],
            json!({"signal": "HUP", "processName": "app"})
        );
        assert_eq!(c["action"], json!({"post": "http://127.0.0.1:8080/reload"}));
    }

    #[test]
    fn refuses_an_unknown_annotation() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/fromat-db", "json"),
        ])
        .unwrap_err();
        assert_eq!(e, AnnotationError::Unknown("coffer.dev/fromat-db".into()));
    }

    #[test]
    fn refuses_no_secrets() {
        assert_eq!(
            config(&[("coffer.dev/inject", "true")]).unwrap_err(),
            AnnotationError::NoSecrets
        );
    }

    #[test]
    fn refuses_an_option_for_an_undeclared_secret() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/mode-api", "0400"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Orphan(_)), "{e}");
    }

    #[test]
    fn refuses_a_file_name_that_escapes_the_directory() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/file-db", "../etc/passwd"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Invalid(_)), "{e}");
    }

    #[test]
    fn refuses_an_unknown_format() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db"),
            ("coffer.dev/format-db", "xml"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Invalid(_)), "{e}");
    }

    #[test]
    fn refuses_a_mode_that_is_not_octal() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/mode-db", "rw-r--r--"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Invalid(_)), "{e}");
    }

    #[test]
    fn refuses_a_template_that_does_not_parse() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db"),
            ("coffer.dev/template-db", "{{ password "),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::Invalid(_)), "{e}");
    }

    #[test]
    fn refuses_a_template_that_cannot_render_naming_its_annotation() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/file-db", "db.conf"),
            ("coffer.dev/template-db", "{{ source.password }}"),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            AnnotationError::Template {
                annotation: "coffer.dev/template-db".into(),
                file: "db.conf".into(),
                reason: "UndefinedError at line 1".into(),
            }
        );
    }

    #[test]
    fn refuses_an_action_that_is_not_a_mapping() {
        let e = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            ("coffer.dev/action-db", "kill -HUP 1"),
        ])
        .unwrap_err();
        assert!(matches!(e, AnnotationError::BadValue { .. }), "{e}");
    }

    fn annotations<'a>(pairs: &[(&'a str, &'a str)]) -> Annotations<'a> {
        Annotations::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn sidecar_mode_defaults_to_the_injectors() {
        let map = annotations(&[("coffer.dev/secret-db", "shop/web/db")]);
        assert_eq!(
            sidecar_mode(&map, SidecarMode::Container),
            Ok(SidecarMode::Container)
        );
    }

    #[test]
    fn sidecar_mode_annotation_overrides_the_default() {
        for (name, mode) in [
            ("native", SidecarMode::Native),
            ("container", SidecarMode::Container),
            ("init-only", SidecarMode::InitOnly),
        ] {
            let map = annotations(&[(SIDECAR_MODE, name)]);
            assert_eq!(sidecar_mode(&map, SidecarMode::Native), Ok(mode));
        }
    }

    #[test]
    fn refuses_an_unknown_sidecar_mode() {
        let map = annotations(&[(SIDECAR_MODE, "legacy")]);
        let e = sidecar_mode(&map, SidecarMode::Native).unwrap_err();
        assert_eq!(e, AnnotationError::BadSidecarMode("legacy".into()));
        assert!(e.to_string().contains(SIDECAR_MODE), "{e}");
    }

    #[test]
    fn the_sidecar_mode_annotation_is_not_an_unknown_annotation() {
        let c = config(&[
            ("coffer.dev/secret-db", "shop/web/db#password"),
            (SIDECAR_MODE, "container"),
        ]);
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn refuses_an_inject_value_that_is_not_a_boolean() {
        let text = json!({"metadata": {"labels": {"coffer.dev/inject": "yes"}}}).to_string();
        assert_eq!(
            wants_injection(&Pod::parse(&text).unwrap()).unwrap_err(),
            AnnotationError::BadInject("yes".into())
        );
    }
}
