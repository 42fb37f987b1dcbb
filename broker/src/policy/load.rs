//! Reading a policy document: the YAML shape, its field checks (each error
//! with the line at fault), and the rules it yields.

use serde::{Deserialize, Deserializer};

use super::{
    capability::{Capability, Effect},
    pattern::PathPattern,
    rule::{Rule, Subject},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    effect: Effect,
    #[serde(deserialize_with = "non_empty_subjects")]
    subjects: Vec<Subject>,
    #[serde(deserialize_with = "non_empty_paths")]
    paths: Vec<PathPattern>,
    #[serde(deserialize_with = "non_empty_capabilities")]
    capabilities: Vec<Capability>,
}

fn non_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    field: &str,
) -> Result<Vec<T>, D::Error> {
    let items = Vec::<T>::deserialize(d)?;
    if items.is_empty() {
        return Err(serde::de::Error::custom(format!(
            "{field} must list at least one entry"
        )));
    }
    Ok(items)
}

fn non_empty_subjects<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Subject>, D::Error> {
    non_empty(d, "subjects")
}

fn non_empty_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathPattern>, D::Error> {
    non_empty(d, "paths")
}

fn non_empty_capabilities<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Capability>, D::Error> {
    non_empty(d, "capabilities")
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        PathPattern::parse(&raw).map_err(serde::de::Error::custom)
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
    #[error("invalid policy: rule {rule}: {reason}")]
    Issuer { rule: String, reason: String },
}

impl PolicyError {
    /// The line of the policy file at fault, when known (1-based).
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse(e) => e.location().map(|l| l.line()),
            _ => None,
        }
    }
}

/// Parses and validates a policy document into its rules, in file order.
pub(super) fn rules_from_yaml(text: &str) -> Result<Vec<Rule>, PolicyError> {
    let file: PolicyFile = serde_norway::from_str(text)?;
    file.rules
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let name = r.name.unwrap_or_else(|| format!("rules[{index}]"));
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(PolicyError::Invalid {
                    rule: index,
                    reason: "a rule name must be non-empty printable text".into(),
                });
            }
            Ok(Rule::new(
                name.into(),
                r.effect,
                r.subjects,
                r.paths,
                r.capabilities,
            ))
        })
        .collect()
}
