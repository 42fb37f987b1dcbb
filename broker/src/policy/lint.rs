//! What a valid policy may still get wrong: subjects that do not fit the
//! configured issuers (refused at start and reload), and risky breadth
//! (reported by `cofferctl policy lint` and the reload log, not refused).

use std::fmt;

use super::{capability::Effect, load::PolicyError, pattern::PathPattern, rule::Rule};

/// A policy that is valid but risky: reported, not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    /// The rule's name.
    pub rule: String,
    /// What is risky about it.
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {}: {}", self.rule, self.message)
    }
}

/// Checks the subjects against the issuers the broker trusts: a subject
/// may only name a configured issuer, and when several are configured
/// every subject must name one (identities of different issuers are
/// different workloads). An empty list skips the check (offline tools
/// that do not know the configuration).
pub(super) fn check_issuers(rules: &[Rule], configured: &[String]) -> Result<(), PolicyError> {
    if configured.is_empty() {
        return Ok(());
    }
    for rule in rules {
        for (index, subject) in rule.subjects.iter().enumerate() {
            let reason = match &subject.issuer {
                Some(issuer) if !configured.contains(issuer) => format!(
                    "subjects[{index}] names issuer {issuer:?}, which is not configured \
                     (configured: {})",
                    configured.join(", ")
                ),
                Some(_) => continue,
                None if configured.len() > 1 => format!(
                    "subjects[{index}] must name an issuer: several issuers are \
                     configured ({}), and a namespace/service account alone is \
                     ambiguous across them",
                    configured.join(", ")
                ),
                None => continue,
            };
            return Err(PolicyError::Issuer {
                rule: rule.name.to_string(),
                reason,
            });
        }
    }
    Ok(())
}

/// Valid but risky grants.
pub(super) fn warnings(rules: &[Rule]) -> Vec<PolicyWarning> {
    let mut warnings = Vec::new();
    let mut names = std::collections::HashSet::new();
    for rule in rules {
        let warn = |warnings: &mut Vec<PolicyWarning>, message: String| {
            warnings.push(PolicyWarning {
                rule: rule.name.to_string(),
                message,
            })
        };
        if !names.insert(&*rule.name) {
            warn(
                &mut warnings,
                "the name is used by another rule: audit records will be ambiguous".into(),
            );
        }
        if rule.effect == Effect::Deny {
            continue;
        }
        let every_namespace = rule
            .subjects
            .iter()
            .any(|s| s.namespace.matches_everything());
        let every_workload = rule.subjects.iter().any(|s| {
            s.namespace.matches_everything()
                && s.service_account.matches_everything()
                && s.pod_name_prefix.is_none()
        });
        let every_path = rule.paths.iter().any(PathPattern::matches_everything);
        let untemplated_everywhere = rule
            .paths
            .iter()
            .any(|p| !p.is_templated() && p.as_str().starts_with('*'));
        let write_side: Vec<&str> = rule
            .capabilities
            .iter()
            .filter(|c| c.is_write_side())
            .map(|c| c.as_str())
            .collect();
        if !write_side.is_empty() && every_path {
            warn(
                &mut warnings,
                format!("grants {} on every path", write_side.join(", ")),
            );
        }
        if !write_side.is_empty() && every_namespace {
            warn(
                &mut warnings,
                format!("grants {} to every namespace", write_side.join(", ")),
            );
        }
        if every_path && every_workload {
            warn(
                &mut warnings,
                "grants every workload access to every path".into(),
            );
        } else if every_path {
            warn(&mut warnings, "grants access to every path".into());
        } else if every_workload && untemplated_everywhere {
            warn(
                &mut warnings,
                "grants every workload a path pattern that starts with a wildcard".into(),
            );
        }
    }
    warnings
}
