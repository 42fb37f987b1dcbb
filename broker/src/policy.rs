//! Authorization: which workload may do what to which paths. Deny by default.
//!
//! ```yaml
//! rules:
//!   - subjects:
//!       - namespace: shop
//!         serviceAccount: web
//!     paths: ["shop/web/*", "shared/tls"]
//!     capabilities: [read, watch]
//! ```
//!
//! A path pattern is exact (`shared/tls`) or a prefix (`shop/web/*`, which
//! matches everything below `shop/web/`). `*` as a namespace or service
//! account matches any. A `#key` selector is authorized as its base path.

use std::path::Path;

use serde::Deserialize;

use crate::{auth::WorkloadIdentity, path::SecretPath};

/// What a caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Read,
    Watch,
    Write,
    Rotate,
    Rollback,
    List,
    Status,
}

impl Capability {
    /// The name used in policy files and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Watch => "watch",
            Self::Write => "write",
            Self::Rotate => "rotate",
            Self::Rollback => "rollback",
            Self::List => "list",
            Self::Status => "status",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    name: Option<String>,
    subjects: Vec<Subject>,
    paths: Vec<String>,
    capabilities: Vec<Capability>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Subject {
    namespace: String,
    service_account: String,
}

/// A loaded, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule with this name (or index).
    Allow { rule: String },
    /// No rule allows it.
    Deny,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy: {0}")]
    Parse(#[from] serde_norway::Error),
    #[error("invalid policy: rule {rule}: {reason}")]
    Invalid { rule: usize, reason: String },
}

impl Policy {
    /// A policy that denies everything.
    pub fn deny_all() -> Self {
        Self { rules: Vec::new() }
    }

    /// Parses and validates a policy document.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_norway::from_str(text)?;
        for (index, rule) in file.rules.iter().enumerate() {
            let invalid = |reason: &str| PolicyError::Invalid {
                rule: index,
                reason: reason.to_string(),
            };
            if rule.subjects.is_empty() {
                return Err(invalid("no subjects"));
            }
            if rule.paths.is_empty() {
                return Err(invalid("no paths"));
            }
            if rule.capabilities.is_empty() {
                return Err(invalid("no capabilities"));
            }
            for pattern in &rule.paths {
                let literal = pattern.strip_suffix("/*").unwrap_or(pattern);
                if pattern != "*" && SecretPath::parse(literal).is_err() {
                    return Err(invalid(&format!("bad path pattern {pattern:?}")));
                }
            }
            for s in &rule.subjects {
                if s.namespace.is_empty() || s.service_account.is_empty() {
                    return Err(invalid("empty namespace or service account"));
                }
            }
        }
        Ok(Self { rules: file.rules })
    }

    /// Loads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// May `who` do `capability` on `path`?
    pub fn decide(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
    ) -> Decision {
        for (index, rule) in self.rules.iter().enumerate() {
            let subject_matches = rule.subjects.iter().any(|s| {
                (s.namespace == "*" || s.namespace == who.namespace)
                    && (s.service_account == "*" || s.service_account == who.service_account)
            });
            if subject_matches
                && rule.capabilities.contains(&capability)
                && rule.paths.iter().any(|p| pattern_matches(p, path.base()))
            {
                return Decision::Allow {
                    rule: rule
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("rules[{index}]")),
                };
            }
        }
        Decision::Deny
    }
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/')),
        None => pattern == path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(ns: &str, sa: &str) -> WorkloadIdentity {
        WorkloadIdentity {
            issuer: "i".into(),
            namespace: ns.into(),
            service_account: sa.into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
        }
    }

    const POLICY: &str = r#"
rules:
  - name: web-reads-its-own
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/web/*", "shared/tls"]
    capabilities: [read, watch]
"#;

    #[test]
    fn allows_only_what_a_rule_grants() {
        let policy = Policy::from_yaml(POLICY).unwrap();
        let p = |s| SecretPath::parse(s).unwrap();
        let web = who("shop", "web");
        assert!(
            policy
                .decide(&web, &p("shop/web/db#password"), Capability::Read)
                .is_allowed()
        );
        assert!(
            policy
                .decide(&web, &p("shared/tls"), Capability::Watch)
                .is_allowed()
        );
        assert_eq!(
            policy.decide(&web, &p("shop/web/db"), Capability::Write),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(&web, &p("shop/webx/db"), Capability::Read),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(&web, &p("shop/web"), Capability::Read),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(&web, &p("shared/tls/key"), Capability::Read),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(&who("shop", "api"), &p("shop/web/db"), Capability::Read),
            Decision::Deny
        );
        assert_eq!(
            policy.decide(&who("other", "web"), &p("shop/web/db"), Capability::Read),
            Decision::Deny
        );
    }

    #[test]
    fn unknown_keys_and_empty_rules_are_refused() {
        assert!(
            Policy::from_yaml(
                "rules:\n  - subjects: []\n    paths: [a]\n    capabilities: [read]\n"
            )
            .is_err()
        );
        assert!(Policy::from_yaml("rules: []\nextra: 1\n").is_err());
        assert!(Policy::from_yaml("rules:\n  - subjects: [{namespace: a, serviceAccount: b}]\n    paths: [\"../x\"]\n    capabilities: [read]\n").is_err());
        assert!(Policy::from_yaml("rules:\n  - subjects: [{namespace: a, serviceAccount: b}]\n    paths: [x]\n    capabilities: [sudo]\n").is_err());
    }
}
