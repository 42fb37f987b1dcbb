//! One validated rule: who it is about ([`Subject`]), which paths, which
//! capabilities, and whether it applies to a caller.

use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use super::{
    capability::{Capability, Effect},
    pattern::{NamePattern, PathPattern, is_name_byte},
};
use crate::auth::WorkloadIdentity;

/// Who a rule is about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subject {
    /// The token issuer, exactly (no glob). Required when the broker trusts
    /// several issuers, so that a workload named `shop/web` by one issuer is
    /// never taken for `shop/web` of another.
    #[serde(default, deserialize_with = "issuer")]
    pub issuer: Option<String>,
    /// The namespace: a name or a glob (`*`, `team-*`).
    #[serde(deserialize_with = "name_pattern")]
    pub namespace: NamePattern,
    /// The service account: a name or a glob.
    #[serde(deserialize_with = "name_pattern")]
    pub service_account: NamePattern,
    /// When set, only pod-bound tokens whose pod name starts with this.
    #[serde(default, deserialize_with = "pod_prefix")]
    pub pod_name_prefix: Option<String>,
}

impl Subject {
    pub(super) fn matches(&self, who: &WorkloadIdentity) -> bool {
        self.issuer
            .as_ref()
            .is_none_or(|issuer| *issuer == who.issuer)
            && self.namespace.matches(&who.namespace)
            && self.service_account.matches(&who.service_account)
            && match &self.pod_name_prefix {
                None => true,
                Some(prefix) => who
                    .pod_name
                    .as_deref()
                    .is_some_and(|pod| pod.starts_with(prefix.as_str())),
            }
    }
}

fn name_pattern<'de, D: Deserializer<'de>>(d: D) -> Result<NamePattern, D::Error> {
    let raw = String::deserialize(d)?;
    NamePattern::parse(&raw).map_err(serde::de::Error::custom)
}

fn issuer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw = String::deserialize(d)?;
    if raw.is_empty() || raw.len() > 1024 || raw.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(
            "issuer must be the exact, non-empty `iss` of the tokens",
        ));
    }
    Ok(Some(raw))
}

fn pod_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw = String::deserialize(d)?;
    if raw.is_empty() || !raw.bytes().all(is_name_byte) {
        return Err(serde::de::Error::custom(
            "podNamePrefix must be a non-empty name prefix of [A-Za-z0-9._-]",
        ));
    }
    Ok(Some(raw))
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name, or `rules[INDEX]` when the file gives none (shared with
    /// every decision it makes, so a decision copies no string).
    pub name: Arc<str>,
    /// Allow or deny.
    pub effect: Effect,
    /// Who it is about: any one of these.
    pub subjects: Vec<Subject>,
    /// What it is about: any one of these.
    pub paths: Vec<PathPattern>,
    /// What it grants or forbids.
    pub capabilities: Vec<Capability>,
    caps: u16,
}

impl Rule {
    /// A rule as the file gives it.
    pub(super) fn new(
        name: Arc<str>,
        effect: Effect,
        subjects: Vec<Subject>,
        paths: Vec<PathPattern>,
        capabilities: Vec<Capability>,
    ) -> Self {
        Self {
            name,
            effect,
            caps: capabilities.iter().fold(0, |acc, c| acc | c.bit()),
            subjects,
            paths,
            capabilities,
        }
    }

    /// Whether the rule grants or forbids `capability` at all.
    pub(super) fn covers(&self, capability: Capability) -> bool {
        self.caps & capability.bit() != 0
    }

    pub(super) fn applies(
        &self,
        who: &WorkloadIdentity,
        parts: &[&str],
        capability: Capability,
    ) -> bool {
        self.covers(capability)
            && self.subjects.iter().any(|s| s.matches(who))
            && self.paths.iter().any(|p| p.matches_segments(parts, who))
    }
}
