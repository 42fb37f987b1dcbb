//! `cofferctl migrate`: Kubernetes YAML from Vault Agent's annotations to
//! Coffer's, with the injector's own translation
//! (`coffer_injector::vault_k8s`), and a report of every annotation.

use std::{fmt::Write as _, io::Read as _, path::Path, process::ExitCode};

use anyhow::Context as _;
use coffer_injector::vault_k8s::{Outcome, Translation, VAULT_PREFIX, translate};
use serde::Deserialize as _;
use serde_norway::{Mapping, Value};

use crate::exit::{self, UsageError};

/// The label that routes a pod to Coffer's injector.
const INJECT_LABEL: &str = "coffer.dev/inject";

/// The counts of a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) translated: usize,
    pub(crate) converted: usize,
    pub(crate) ignored: usize,
    pub(crate) refused: usize,
}

/// Runs `cofferctl migrate FILE [--check]`.
pub(crate) fn run(file: &Path, check: bool) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let (yaml, report, counts) = migrate(&text).map_err(UsageError)?;
    eprint!("{report}");
    if !check {
        print!("{yaml}");
    }
    Ok(if check && counts.refused > 0 {
        ExitCode::from(exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

/// The migrated YAML, the report and its counts; `Err` for input that is
/// not YAML.
pub(crate) fn migrate(text: &str) -> Result<(String, String, Counts), String> {
    let mut out = Vec::new();
    let mut report = String::new();
    let mut counts = Counts::default();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let mut doc = Value::deserialize(document)
            .map_err(|e| format!("document {}: not YAML: {e}", index + 1))?;
        if doc.is_null() {
            continue;
        }
        let name = format!(
            "{}/{}",
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        if let Some(meta) = pod_metadata(&mut doc)
            && let Some(translation) = migrate_metadata(meta)
        {
            let _ = writeln!(report, "{name} (document {}):", index + 1);
            report_translation(&mut report, &translation, &mut counts);
        }
        out.push(serde_norway::to_string(&doc).map_err(|e| e.to_string())?);
    }
    let _ = writeln!(
        report,
        "{} translated, {} converted, {} ignored, {} refused",
        counts.translated, counts.converted, counts.ignored, counts.refused
    );
    Ok((out.join("---\n"), report, counts))
}

/// The pod template's metadata of a workload (created if absent), or the
/// pod's own; `None` for other kinds.
fn pod_metadata(doc: &mut Value) -> Option<&mut Mapping> {
    let kind = doc["kind"].as_str()?.to_string();
    let template = match kind.as_str() {
        "Pod" => doc,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            doc.get_mut("spec")?.get_mut("template")?
        }
        "CronJob" => doc
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?,
        _ => return None,
    };
    let map = template.as_mapping_mut()?;
    map.entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()))
        .as_mapping_mut()
}

/// A YAML scalar as the string Kubernetes would need.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim_end()
            .to_string(),
    }
}

/// Rewrites one pod's metadata; `None` when it has no vault-k8s annotation.
fn migrate_metadata(meta: &mut Mapping) -> Option<Translation> {
    let annotations = meta.get("annotations")?.as_mapping()?.clone();
    let pairs: Vec<(String, String)> = annotations
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v))))
        .collect();
    if !pairs.iter().any(|(k, _)| k.starts_with(VAULT_PREFIX)) {
        return None;
    }
    let translation = translate(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), false);
    let mut kept = Mapping::new();
    for (key, value) in annotations {
        let refused = key
            .as_str()
            .is_some_and(|k| matches!(translation.outcomes.get(k), Some(Outcome::Refused(_))));
        if refused || !key.as_str().is_some_and(|k| k.starts_with(VAULT_PREFIX)) {
            kept.insert(key, value);
        }
    }
    for (key, value) in &translation.annotations {
        kept.insert(key.as_str().into(), value.as_str().into());
    }
    meta.insert("annotations".into(), Value::Mapping(kept));
    if translation.inject == Some(true) {
        let labels = meta
            .entry("labels".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if let Some(labels) = labels.as_mapping_mut() {
            labels.insert(INJECT_LABEL.into(), "true".into());
        }
    }
    Some(translation)
}

fn report_translation(report: &mut String, t: &Translation, counts: &mut Counts) {
    for (annotation, outcome) in &t.outcomes {
        let (word, text) = match outcome {
            Outcome::Translated(to) => {
                counts.translated += 1;
                ("translated", to)
            }
            Outcome::Converted(to) => {
                counts.converted += 1;
                ("converted", to)
            }
            Outcome::Ignored(why) => {
                counts.ignored += 1;
                ("ignored", why)
            }
            Outcome::Refused(instead) => {
                counts.refused += 1;
                ("refused", instead)
            }
        };
        let _ = writeln!(report, "  {word:<10} {annotation}: {text}");
    }
    if t.inject.is_none() {
        let _ = writeln!(
            report,
            "  note       no vault.hashicorp.com/agent-inject: vault-k8s does not inject this pod, so no {INJECT_LABEL} label was added"
        );
    }
    for note in &t.notes {
        let _ = writeln!(report, "  note       {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"# from Vault's injector docs (examples.mdx, "Deployments, StatefulSets, etc.")
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-example-deployment
spec:
  replicas: 1
  selector:
    matchLabels:
      app: app-example
  template:
    metadata:
      labels:
        app: app-example
      annotations:
        vault.hashicorp.com/agent-inject: 'true'
        vault.hashicorp.com/agent-inject-secret-db-creds: 'database/creds/db-app'
        vault.hashicorp.com/agent-inject-template-db-creds: |
          {{- with secret "database/creds/db-app" -}}
          postgres://{{ .Data.username }}:{{ .Data.password }}@postgres:5432/appdb?sslmode=disable
          {{- end }}
        vault.hashicorp.com/role: 'db-app'
        example.com/keep: 'me'
    spec:
      containers:
        - name: app
          image: 'app:1.0.0'
      serviceAccountName: app-example
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: app-example
"#;

    #[test]
    fn a_deployment_gets_coffer_annotations_and_keeps_the_rest() {
        let (yaml, report, counts) = migrate(DEPLOYMENT).unwrap();
        let docs: Vec<Value> = serde_norway::Deserializer::from_str(&yaml)
            .map(|d| Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        let meta = &docs[0]["spec"]["template"]["metadata"];
        assert_eq!(meta["labels"]["coffer.dev/inject"], "true");
        assert_eq!(meta["labels"]["app"], "app-example");
        assert_eq!(
            meta["annotations"]["coffer.dev/secret-db-creds"],
            "database/creds/db-app"
        );
        assert!(
            meta["annotations"]["coffer.dev/template-db-creds"]
                .as_str()
                .unwrap()
                .contains("secret[\"username\"]")
        );
        assert_eq!(meta["annotations"]["example.com/keep"], "me");
        assert!(
            meta["annotations"]
                .as_mapping()
                .unwrap()
                .keys()
                .all(|k| !k.as_str().unwrap().starts_with(VAULT_PREFIX))
        );
        assert_eq!(docs[0]["spec"]["replicas"], 1);
        assert_eq!(docs[1]["kind"], "ServiceAccount");
        assert_eq!(
            counts,
            Counts {
                translated: 2,
                converted: 1,
                ignored: 1,
                refused: 0
            }
        );
        assert!(
            report.contains("Deployment/app-example-deployment (document 1):"),
            "{report}"
        );
        assert!(
            report.contains("ignored    vault.hashicorp.com/role: "),
            "{report}"
        );
    }

    #[test]
    fn refused_annotations_are_kept_and_counted() {
        let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    vault.hashicorp.com/agent-inject: 'true'\n    vault.hashicorp.com/agent-configmap: my-configmap\nspec:\n  containers: [{name: a, image: a}]\n";
        let (yaml, report, counts) = migrate(pod).unwrap();
        assert_eq!(counts.refused, 1);
        assert!(
            yaml.contains("vault.hashicorp.com/agent-configmap: my-configmap"),
            "{yaml}"
        );
        assert!(
            report.contains("refused    vault.hashicorp.com/agent-configmap: "),
            "{report}"
        );
    }

    #[test]
    fn a_cron_job_template_is_found() {
        let job = "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        metadata:\n          annotations:\n            vault.hashicorp.com/agent-inject: 'true'\n            vault.hashicorp.com/agent-pre-populate-only: 'true'\n            vault.hashicorp.com/agent-inject-secret-db: secret/data/shop/db\n        spec: {containers: [{name: a, image: a}]}\n";
        let (yaml, _, counts) = migrate(job).unwrap();
        assert_eq!(counts.refused, 0);
        assert!(
            yaml.contains("coffer.dev/sidecar-mode: init-only"),
            "{yaml}"
        );
        assert!(yaml.contains("coffer.dev/secret-db: shop/db"), "{yaml}");
    }

    #[test]
    fn not_yaml_is_a_usage_error() {
        assert!(migrate("a: [").is_err());
    }
}
