//! A pod's `vault.hashicorp.com/` annotations → `coffer.dev/` annotations,
//! by the rules of [`super::rules`], with an outcome for every one.

use std::collections::BTreeMap;

use super::{
    command,
    rules::{Row, Rule, Scope, lookup},
};
use crate::gotemplate::{self, SecretKind};

/// The prefix of vault-k8s's annotations.
pub const VAULT_PREFIX: &str = "vault.hashicorp.com/";
const COFFER: &str = "coffer.dev/";
/// vault-k8s's default `secret-volume-path`.
pub const DEFAULT_VOLUME_PATH: &str = "/vault/secrets";

/// What became of one annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Translated into what the text says.
    Translated(String),
    /// A Go template converted into `coffer.dev/template-<name>`.
    Converted(String),
    /// Ignored, and why.
    Ignored(String),
    /// Refused, and what to write instead.
    Refused(String),
}

/// The translation of a pod's annotations.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// The `coffer.dev/` annotations the vault-k8s ones mean.
    pub annotations: BTreeMap<String, String>,
    /// Every `vault.hashicorp.com/` annotation, with its outcome.
    pub outcomes: BTreeMap<String, Outcome>,
    /// Differences from Vault Agent worth a warning.
    pub notes: Vec<String>,
    /// `agent-inject`'s value, if given.
    pub inject: Option<bool>,
    /// The vault-k8s annotation each `coffer.dev/` one came from.
    pub origins: BTreeMap<String, String>,
}

impl Translation {
    /// The refused annotations and what to write instead.
    pub fn refusals(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes.iter().filter_map(|(k, o)| match o {
            Outcome::Refused(why) => Some((k.as_str(), why.as_str())),
            _ => None,
        })
    }

    /// The admission warnings: each ignored annotation, and the notes.
    pub fn warnings(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|(k, o)| match o {
                Outcome::Ignored(why) => Some(format!("{k} is ignored: {why}")),
                _ => None,
            })
            .chain(self.notes.iter().cloned())
            .collect()
    }

    fn emit(&mut self, origin: &str, key: String, value: String) {
        self.origins.insert(key.clone(), origin.to_string());
        self.annotations.insert(key, value);
    }

    fn set(&mut self, annotation: &str, outcome: Outcome) {
        self.outcomes.insert(annotation.to_string(), outcome);
    }
}

/// Go's `strconv.ParseBool`, as vault-k8s reads its booleans.
pub fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(crate) const TEMPLATE_FILE: &str = "the template is a file in the pod that the sidecar does not read: put it inline as `coffer.dev/template-<name>`";
const NOT_BOOL: &str =
    "not a boolean (Go's ParseBool: true, false, 1, 0, t, f, T, F, TRUE, FALSE, True, False)";

/// `secret/data/shop/db` (KV v2, as vault-k8s wants it) → `shop/db`; other
/// paths as written (the broker's `mounts:` map them).
pub fn broker_path(path: &str) -> String {
    match (SecretKind::of(path), path.split_once('/')) {
        (SecretKind::KvV2, Some((_, rest))) => rest["data/".len()..].to_string(),
        _ => path.to_string(),
    }
}

/// Translates `annotations` (all of a pod's). `opted_in`: the pod opts in
/// with Coffer's label or annotation, so `agent-inject: "false"` conflicts.
pub fn translate<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a str)>,
    opted_in: bool,
) -> Translation {
    let mut t = Translation::default();
    let mut existing = BTreeMap::new();
    let mut per_secret: BTreeMap<String, BTreeMap<&'static str, (String, String)>> =
        BTreeMap::new();
    let mut default_json = false;
    let mut preserve_case = false;
    for (key, value) in annotations {
        if key.starts_with(COFFER) {
            existing.insert(key.to_string(), value.to_string());
        }
        let Some(rest) = key.strip_prefix(VAULT_PREFIX) else {
            continue;
        };
        let Some((row, suffix)) = lookup(rest) else {
            t.set(
                key,
                Outcome::Ignored(
                    "not a vault-k8s annotation (vault-k8s ignores it too: misspelt?)".into(),
                ),
            );
            continue;
        };
        match (row.scope, suffix) {
            (Scope::Secret, Some(raw)) => {
                per_secret
                    .entry(raw.to_string())
                    .or_default()
                    .insert(row.name, (key.to_string(), value.to_string()));
            }
            _ => pod_annotation(
                &mut t,
                row,
                key,
                value,
                opted_in,
                &mut default_json,
                &mut preserve_case,
            ),
        }
    }
    secrets(&mut t, per_secret, default_json, preserve_case);
    // vault-k8s writes to /vault/secrets unless told otherwise; the app
    // reads there.
    let mount = format!("{COFFER}mount-path");
    let first_secret = t
        .origins
        .iter()
        .find(|(k, _)| k.starts_with("coffer.dev/secret-"))
        .map(|(_, o)| o.clone());
    if let Some(origin) = first_secret
        && !t.annotations.contains_key(&mount)
        && !existing.contains_key(&mount)
    {
        t.emit(&origin, mount, DEFAULT_VOLUME_PATH.into());
    }
    // A vault-k8s annotation may not contradict its coffer.dev/ counterpart.
    let conflicts: Vec<(String, String)> = t
        .annotations
        .iter()
        .filter(|(k, v)| existing.get(*k).is_some_and(|e| e != *v))
        .map(|(k, _)| (t.origins[k].clone(), k.clone()))
        .collect();
    for (origin, key) in conflicts {
        t.set(
            &origin,
            Outcome::Refused(format!("it disagrees with {key}: keep one of the two")),
        );
    }
    t
}

fn pod_annotation(
    t: &mut Translation,
    row: &Row,
    key: &str,
    value: &str,
    opted_in: bool,
    json: &mut bool,
    preserve: &mut bool,
) {
    let boolean = go_bool(value.trim());
    let outcome = match row.rule {
        Rule::Ignored(why) => Outcome::Ignored(why.into()),
        Rule::Refused(instead) if matches!(row.name, "agent-inject-token" | "agent-enable-quit") => match boolean {
            Some(false) => Outcome::Ignored("false: nothing to do".into()),
            Some(true) => Outcome::Refused(instead.into()),
            None => Outcome::Refused(NOT_BOOL.into()),
        },
        Rule::Refused(instead) => Outcome::Refused(instead.into()),
        Rule::Translated(into) => match (row.name, boolean) {
            ("agent-inject", Some(inject)) => {
                t.inject = Some(inject);
                match (inject, opted_in) {
                    (false, true) => Outcome::Refused("\"false\" disagrees with coffer.dev/inject: keep one of the two".into()),
                    (false, false) => Outcome::Translated("not injected: no coffer.dev/inject label".into()),
                    (true, _) => Outcome::Translated(into.into()),
                }
            }
            ("agent-pre-populate-only", Some(only)) => {
                if only {
                    t.emit(key, "coffer.dev/sidecar-mode".into(), "init-only".into());
                }
                Outcome::Translated(if only { into.into() } else { "false: a long-running sidecar".into() })
            }
            ("agent-share-process-namespace", Some(share)) => {
                t.emit(key, "coffer.dev/share-process-namespace".into(), share.to_string());
                Outcome::Translated(into.into())
            }
            ("preserve-secret-case", Some(keep)) => {
                *preserve = keep;
                Outcome::Translated(into.into())
            }
            ("agent-run-as-same-user", Some(_)) => Outcome::Translated(into.into()),
            ("agent-inject" | "agent-pre-populate-only" | "agent-share-process-namespace" | "preserve-secret-case" | "agent-run-as-same-user", None) => {
                Outcome::Refused(NOT_BOOL.into())
            }
            ("agent-inject-default-template", _) => match value.to_lowercase().as_str() {
                "map" => Outcome::Translated(into.into()),
                "json" => {
                    *json = true;
                    Outcome::Translated(into.into())
                }
                _ => Outcome::Refused("vault-k8s accepts \"map\" or \"json\"".into()),
            },
            ("agent-inject-containers", _) => {
                let names: Vec<&str> = value.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
                t.emit(key, "coffer.dev/containers".into(), names.join(","));
                Outcome::Translated(into.into())
            }
            ("agent-run-as-user" | "agent-run-as-group", _) => match value.trim().parse::<i64>() {
                Ok(0) if row.name == "agent-run-as-user" => {
                    Outcome::Refused("the sidecar never runs as root: name a non-zero uid, or leave it out (the app's uid)".into())
                }
                Ok(id) if id >= 0 => {
                    let name = row.name.trim_start_matches("agent-");
                    t.emit(key, format!("{COFFER}{name}"), id.to_string());
                    Outcome::Translated(into.into())
                }
                _ => Outcome::Refused("not a user or group id".into()),
            },
            ("secret-volume-path", _) => absolute(t, key, "coffer.dev/mount-path".into(), value, into),
            (name, _) if name.starts_with("agent-limits-") || name.starts_with("agent-requests-") => {
                let (kind, resource) = name["agent-".len()..].split_once('-').unwrap_or_default();
                let resource = match resource {
                    "mem" => "memory",
                    "ephemeral" => "ephemeral-storage",
                    other => other,
                };
                if is_quantity(value.trim()) {
                    t.emit(key, format!("{COFFER}sidecar-{kind}-{resource}"), value.trim().into());
                    Outcome::Translated(into.into())
                } else {
                    Outcome::Refused("not a Kubernetes quantity (such as 250m or 64Mi)".into())
                }
            }
            _ => Outcome::Translated(into.into()),
        },
    };
    t.set(key, outcome);
}

fn absolute(t: &mut Translation, key: &str, coffer: String, value: &str, into: &str) -> Outcome {
    let path = value.trim();
    if path.starts_with('/') && !path.split('/').any(|p| p == "..") && !path.contains(':') {
        let trimmed = path.trim_end_matches('/');
        t.emit(
            key,
            coffer,
            if trimmed.is_empty() { "/" } else { trimmed }.to_string(),
        );
        Outcome::Translated(into.into())
    } else {
        Outcome::Refused("an absolute directory path without \"..\"".into())
    }
}

/// A Kubernetes quantity: digits with an optional fraction and suffix.
fn is_quantity(text: &str) -> bool {
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[number.len()..];
    !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ]
        .contains(&suffix)
}

fn secrets(
    t: &mut Translation,
    per_secret: BTreeMap<String, BTreeMap<&'static str, (String, String)>>,
    json: bool,
    preserve_pod: bool,
) {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for (raw, mut anns) in per_secret {
        let get = |anns: &BTreeMap<&str, (String, String)>, name: &str| {
            anns.get(name)
                .filter(|(_, v)| !v.trim().is_empty())
                .cloned()
        };
        let secret = get(&anns, "agent-inject-secret");
        let template = get(&anns, "agent-inject-template");
        let template_file = get(&anns, "agent-inject-template-file");
        if secret.is_none() && template.is_none() && template_file.is_none() {
            for (_, (key, _)) in anns {
                t.set(
                    &key,
                    Outcome::Ignored(format!(
                        "no agent-inject-secret-{raw}: vault-k8s ignores it too"
                    )),
                );
            }
            continue;
        }
        let preserve = match anns.remove("preserve-secret-case") {
            Some((key, value)) => match go_bool(value.trim()) {
                Some(keep) => {
                    t.set(
                        &key,
                        Outcome::Translated("this secret's file name keeps its case".into()),
                    );
                    keep
                }
                None => {
                    t.set(&key, Outcome::Refused(NOT_BOOL.into()));
                    preserve_pod
                }
            },
            None => preserve_pod,
        };
        let name = if preserve {
            raw.clone()
        } else {
            raw.to_lowercase()
        };
        if let Some(first) = names.insert(name.clone(), raw.clone()) {
            for (_, (key, _)) in anns {
                t.set(
                    &key,
                    Outcome::Refused(format!(
                        "its file {name:?} is also secret {first:?}'s: rename one"
                    )),
                );
            }
            continue;
        }
        secret_file(t, &name, &raw, anns, secret, template, template_file, json);
    }
}

#[allow(clippy::too_many_arguments)] // One secret's parts, each read once.
fn secret_file(
    t: &mut Translation,
    name: &str,
    raw: &str,
    anns: BTreeMap<&'static str, (String, String)>,
    secret: Option<(String, String)>,
    template: Option<(String, String)>,
    template_file: Option<(String, String)>,
    json: bool,
) {
    let delim = |which: &str, default: &'static str| {
        anns.get(which)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
            .to_string()
    };
    let (left, right) = (
        delim("agent-template-left-delim", "{{"),
        delim("agent-template-right-delim", "}}"),
    );
    let mut path = secret.as_ref().map(|(_, p)| p.trim().to_string());
    let source;
    if let Some((key, text)) = &template {
        match gotemplate::convert(text, &left, &right) {
            Ok(converted) => {
                match (&path, &converted.path) {
                    (Some(p), Some(q)) if p != q => {
                        t.set(key, Outcome::Refused(format!("it reads {q:?} but agent-inject-secret-{raw} names {p:?}: a file renders one secret")));
                        return;
                    }
                    (None, None) => {
                        t.set(key, Outcome::Refused(format!("no secret path: add agent-inject-secret-{raw} or {{{{ with secret \"PATH\" }}}}")));
                        return;
                    }
                    _ => {}
                }
                path = path.or(converted.path);
                source = converted.template;
                t.set(
                    key,
                    Outcome::Converted(format!("coffer.dev/template-{name}")),
                );
            }
            Err(refusal) => {
                t.set(
                    key,
                    Outcome::Refused(format!(
                        "{refusal}; or write the file in minijinja as coffer.dev/template-{name}"
                    )),
                );
                return;
            }
        }
        if let Some((key, _)) = &template_file {
            t.set(
                key,
                Outcome::Ignored("agent-inject-template takes precedence, as in vault-k8s".into()),
            );
        }
    } else if let Some((key, _)) = &template_file {
        t.set(key, Outcome::Refused(TEMPLATE_FILE.into()));
        if let Some((key, _)) = &secret {
            t.set(
                key,
                Outcome::Refused(format!(
                    "its template is agent-inject-template-file-{raw}, refused"
                )),
            );
        }
        return;
    } else {
        let Some(p) = &path else { return };
        let (default, note) = gotemplate::default_template(p, json);
        source = default;
        if let Some(note) = note {
            t.notes.push(format!("vault.hashicorp.com/agent-inject-secret-{raw}: vault-k8s's default template; {note}"));
        }
    }
    let Some(path) = path else { return };
    let origin = secret
        .as_ref()
        .or(template.as_ref())
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    t.emit(
        &origin,
        format!("{COFFER}secret-{name}"),
        broker_path(&path),
    );
    t.emit(
        template.as_ref().map_or(&origin, |(k, _)| k),
        format!("{COFFER}template-{name}"),
        source,
    );
    if let Some((key, _)) = &secret {
        let how = if template.is_some() {
            ""
        } else {
            " with vault-k8s's default template"
        };
        t.set(
            key,
            Outcome::Translated(format!(
                "coffer.dev/secret-{name}: {}{how}",
                broker_path(&path)
            )),
        );
    }
    for (row, (key, value)) in anns {
        let outcome = match row {
            "agent-inject-secret" | "agent-inject-template" | "agent-inject-template-file" => {
                continue;
            }
            "agent-inject-file" if value.contains('/') => Outcome::Refused(format!(
                "a file name without '/': for another directory use secret-volume-path-{raw} (coffer.dev/mount-path-{name})"
            )),
            "agent-inject-file" => {
                t.emit(&key, format!("{COFFER}file-{name}"), value.clone());
                Outcome::Translated(format!("coffer.dev/file-{name}"))
            }
            "agent-inject-perms" => {
                t.emit(&key, format!("{COFFER}mode-{name}"), value.clone());
                Outcome::Translated(format!("coffer.dev/mode-{name}"))
            }
            "agent-inject-command" => match command::action(&value) {
                Some(action) => {
                    t.emit(&key, format!("{COFFER}action-{name}"), action.to_string());
                    Outcome::Translated(format!("coffer.dev/action-{name}: {action}"))
                }
                None => Outcome::Refused(command::INSTEAD.replace("<name>", name)),
            },
            "secret-volume-path" => absolute(
                t,
                &key,
                format!("{COFFER}mount-path-{name}"),
                &value,
                "coffer.dev/mount-path-<name>",
            ),
            "error-on-missing-key" => match go_bool(value.trim()) {
                Some(_) => {
                    Outcome::Translated("always so in Coffer: a missing key is an error".into())
                }
                None => Outcome::Refused(NOT_BOOL.into()),
            },
            "agent-template-left-delim" | "agent-template-right-delim" => {
                Outcome::Translated("the template is read with it".into())
            }
            _ => Outcome::Translated(String::new()),
        };
        t.set(&key, outcome);
    }
}
