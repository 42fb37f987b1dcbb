//! Authorization: which workload may do what to which paths. Deny by default;
//! an explicit deny beats any allow.
//!
//! ```yaml
//! rules:
//!   - name: each-workload-reads-its-own-folder
//!     subjects:
//!       - namespace: "*"
//!         serviceAccount: "*"
//!     paths: ["{namespace}/{serviceaccount}/*"]
//!     capabilities: [read, watch]
//!   - name: web-reads-shared-tls
//!     subjects:
//!       - namespace: shop
//!         serviceAccount: web-*
//!         podNamePrefix: web-
//!     paths: ["shared/tls"]
//!     capabilities: [read, watch]
//!   # Patterns match base paths: `shared/ca/root#key` is decided as
//!   # `shared/ca/root`, so a single key of a map cannot be allowed or
//!   # denied on its own. Keep what must be denied at a path of its own.
//!   - name: nobody-reads-root-ca-private-keys
//!     effect: deny
//!     subjects: [{namespace: "*", serviceAccount: "*"}]
//!     paths: ["shared/ca/**/private-key"]
//!     capabilities: [read, watch]
//!   # With several issuers configured, every subject names one (exactly).
//!   - name: prod-web-reads-prod
//!     subjects:
//!       - issuer: https://prod.example
//!         namespace: shop
//!         serviceAccount: web
//!     paths: ["prod/shop/*"]
//!     capabilities: [read, watch]
//! ```
//!
//! Path patterns are described in [`pattern`]. A `#key` selector is
//! authorized as its base path. Errors found while parsing carry the line
//! number; risky breadth is reported by [`Policy::warnings`]; whether the
//! subjects fit the configured issuers is checked by
//! [`Policy::check_issuers`].

mod capability;
mod index;
mod lint;
mod load;
pub mod pattern;
mod rule;

use std::{collections::HashMap, fmt, path::Path, sync::Arc};

use smallvec::SmallVec;

use crate::{auth::WorkloadIdentity, path::SecretPath};
pub use capability::{Capability, Effect};
use index::{PathIndex, merge_ascending};
pub use lint::PolicyWarning;
pub use load::PolicyError;
pub use pattern::{NamePattern, PathPattern, PatternError};
pub use rule::{Rule, Subject};

/// A loaded, validated policy, indexed by namespace and by the first
/// segment of the paths, so that a decision looks only at the rules that
/// could apply: a rule for another namespace, or for paths under another
/// top folder, costs nothing.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    /// Rules with a subject naming this exact namespace, ascending.
    by_namespace: HashMap<String, Vec<usize>>,
    /// Rules with a namespace glob, ascending.
    any_namespace: Vec<usize>,
    /// The same two sets, each split by the paths' first segment.
    by_namespace_path: HashMap<String, PathIndex>,
    any_namespace_path: PathIndex,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule with this name, and no deny rule applies.
    Allow { rule: Arc<str> },
    /// No rule allows it (deny by default).
    Deny,
    /// A deny rule with this name applies; it beats any allow.
    ExplicitDeny { rule: Arc<str> },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::Allow { rule } | Self::ExplicitDeny { rule } => Some(rule),
            Self::Deny => None,
        }
    }

    /// A short, stable name for logs and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allowed",
            Self::Deny => "no_matching_rule",
            Self::ExplicitDeny { .. } => "explicit_deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allow { rule } => write!(f, "allow (rule {rule})"),
            Self::Deny => f.write_str("deny (no rule allows it)"),
            Self::ExplicitDeny { rule } => write!(f, "deny (rule {rule})"),
        }
    }
}

impl Policy {
    /// A policy that denies everything.
    pub fn deny_all() -> Self {
        Self::from_rules(Vec::new())
    }

    /// Parses and validates a policy document.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        load::rules_from_yaml(text).map(Self::from_rules)
    }

    fn from_rules(rules: Vec<Rule>) -> Self {
        let mut by_namespace: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any_namespace = Vec::new();
        let mut by_namespace_path: HashMap<String, PathIndex> = HashMap::new();
        let mut any_namespace_path = PathIndex::default();
        for (index, rule) in rules.iter().enumerate() {
            let mut globbed = false;
            for subject in &rule.subjects {
                match subject.namespace.literal() {
                    Some(ns) => {
                        let bucket = by_namespace.entry(ns.to_string()).or_default();
                        if bucket.last() != Some(&index) {
                            bucket.push(index);
                            by_namespace_path
                                .entry(ns.to_string())
                                .or_default()
                                .add(index, rule);
                        }
                    }
                    None => globbed = true,
                }
            }
            if globbed {
                any_namespace.push(index);
                any_namespace_path.add(index, rule);
            }
        }
        Self {
            rules,
            by_namespace,
            any_namespace,
            by_namespace_path,
            any_namespace_path,
        }
    }

    /// Loads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Checks the subjects against the issuers the broker trusts: a subject
    /// may only name a configured issuer, and when several are configured
    /// every subject must name one (identities of different issuers are
    /// different workloads). An empty list skips the check (offline tools
    /// that do not know the configuration).
    pub fn check_issuers(&self, configured: &[String]) -> Result<(), PolicyError> {
        lint::check_issuers(&self.rules, configured)
    }

    /// May `who` do `capability` on `path`? An applicable deny rule wins;
    /// otherwise the first applicable allow rule decides; otherwise deny.
    pub fn decide(
        &self,
        who: &WorkloadIdentity,
        path: &SecretPath,
        capability: Capability,
    ) -> Decision {
        let mut allow: Option<usize> = None;
        // Validated paths have at most MAX_PATH_LEN / 2 segments; most have
        // a few, kept on the stack.
        let parts: SmallVec<[&str; 8]> = path.base().split('/').collect();
        let first = parts.first().copied().unwrap_or_default();
        let exact = self.by_namespace_path.get(&who.namespace);
        // In file order: the first applicable allow names the grant.
        let candidates = merge_ascending(
            exact.into_iter().flat_map(|index| index.candidates(first)),
            self.any_namespace_path.candidates(first),
        );
        for index in candidates {
            let rule = &self.rules[index];
            if !rule.applies(who, &parts, capability) {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision::ExplicitDeny {
                        rule: rule.name.clone(),
                    };
                }
                Effect::Allow => {
                    allow.get_or_insert(index);
                }
            }
        }
        match allow {
            Some(index) => Decision::Allow {
                rule: self.rules[index].name.clone(),
            },
            None => Decision::Deny,
        }
    }

    /// May `who` ask for the names under `folder` (`""`: the root)? Allowed
    /// when an allow rule for `who` grants `capability` (`list`) on a path
    /// pattern that could match something below the folder. Only a first
    /// gate, decided before the store is asked anything: every name listed
    /// is still decided on its own with [`Policy::decide`], deny rules
    /// included.
    pub fn decide_below(
        &self,
        who: &WorkloadIdentity,
        folder: &str,
        capability: Capability,
    ) -> Decision {
        let exact = self
            .by_namespace
            .get(&who.namespace)
            .map_or(&[][..], Vec::as_slice);
        let parts: SmallVec<[&str; 8]> = folder.split('/').filter(|p| !p.is_empty()).collect();
        merge_ascending(exact.iter().copied(), self.any_namespace.iter().copied())
            .map(|index| &self.rules[index])
            .find(|rule| {
                rule.effect == Effect::Allow
                    && rule.covers(capability)
                    && rule.subjects.iter().any(|s| s.matches(who))
                    && rule.paths.iter().any(|p| p.may_match_below(&parts, who))
            })
            .map_or(Decision::Deny, |rule| Decision::Allow {
                rule: rule.name.clone(),
            })
    }

    /// Valid but risky grants, for `cofferctl policy lint` and the reload log.
    pub fn warnings(&self) -> Vec<PolicyWarning> {
        lint::warnings(&self.rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn who(ns: &str, sa: &str) -> WorkloadIdentity {
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
    fn a_folder_may_be_listed_only_by_whom_a_list_rule_reaches_below_it() {
        let policy = Policy::from_yaml(
            r#"
rules:
  - name: admin-lists-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [list]
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
"#,
        )
        .unwrap();
        let admin = who("ops", "admin");
        for folder in ["", "shop", "shop/db"] {
            assert_eq!(
                policy.decide_below(&admin, folder, Capability::List),
                Decision::Allow {
                    rule: "admin-lists-shop".into()
                },
                "{folder:?}"
            );
        }
        assert_eq!(
            policy.decide_below(&admin, "other", Capability::List),
            Decision::Deny
        );
        // A rule without `list`, or no rule at all, opens nothing.
        for caller in [who("shop", "web"), who("evil", "nobody")] {
            for folder in ["", "shop"] {
                assert_eq!(
                    policy.decide_below(&caller, folder, Capability::List),
                    Decision::Deny
                );
            }
        }
    }

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

#[cfg(test)]
mod validation_tests {
    use super::*;

    const TWO_ISSUERS: &str = r#"
rules:
  - name: prod-web
    subjects: [{issuer: prod, namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read]
"#;

    #[test]
    fn a_subject_matches_only_its_issuer() {
        let policy = Policy::from_yaml(TWO_ISSUERS).unwrap();
        let path = SecretPath::parse("shop/db").unwrap();
        let mut who = WorkloadIdentity {
            issuer: "prod".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
        };
        assert!(policy.decide(&who, &path, Capability::Read).is_allowed());
        who.issuer = "dev".into();
        assert_eq!(policy.decide(&who, &path, Capability::Read), Decision::Deny);
        who.issuer = "prod2".into();
        assert_eq!(policy.decide(&who, &path, Capability::Read), Decision::Deny);
    }

    #[test]
    fn several_issuers_require_an_issuer_on_every_subject() {
        let issuers = ["dev".to_string(), "prod".to_string()];
        let named = Policy::from_yaml(TWO_ISSUERS).unwrap();
        assert!(named.check_issuers(&issuers).is_ok());
        assert!(named.check_issuers(&issuers[1..]).is_ok());
        assert!(named.check_issuers(&[]).is_ok());

        let unnamed = Policy::from_yaml(
            "rules:\n  - name: any-web\n    subjects: [{namespace: shop, serviceAccount: web}]\n    paths: [x]\n    capabilities: [read]\n",
        )
        .unwrap();
        assert!(unnamed.check_issuers(&issuers[..1]).is_ok());
        let error = unnamed.check_issuers(&issuers).unwrap_err().to_string();
        assert!(error.contains("rule any-web"), "{error}");
        assert!(error.contains("must name an issuer"), "{error}");

        // Naming an issuer that is not configured is a mistake, not a no-op.
        let error = named.check_issuers(&issuers[..1]).unwrap_err().to_string();
        assert!(
            error.contains("\"prod\", which is not configured"),
            "{error}"
        );
        assert!(Policy::from_yaml(&TWO_ISSUERS.replace("issuer: prod", "issuer: \"\"")).is_err());
    }

    fn error_line(yaml: &str) -> (Option<usize>, String) {
        let e = Policy::from_yaml(yaml).unwrap_err();
        (e.line(), e.to_string())
    }

    #[test]
    fn revoke_is_its_own_write_side_capability() {
        let policy = Policy::from_yaml(
            r#"
rules:
  - name: ops-revokes-shop-leases
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [list, revoke]
  - name: revoke-everywhere
    subjects: [{namespace: ops, serviceAccount: root}]
    paths: ["**"]
    capabilities: [revoke]
"#,
        )
        .unwrap();
        let path = SecretPath::parse("shop/pg").unwrap();
        let who = super::tests::who;
        let admin = who("ops", "admin");
        assert!(
            policy
                .decide(&admin, &path, Capability::Revoke)
                .is_allowed()
        );
        assert!(!policy.decide(&admin, &path, Capability::Read).is_allowed());
        assert!(
            !policy
                .decide(&who("shop", "web"), &path, Capability::Revoke)
                .is_allowed()
        );
        assert_eq!(Capability::from_name("revoke"), Some(Capability::Revoke));
        assert!(Capability::Revoke.is_write_side());
        // Like any write-side capability on every path, lint warns.
        assert!(
            policy
                .warnings()
                .iter()
                .any(|w| w.to_string().contains("revoke-everywhere")),
            "{:?}",
            policy.warnings()
        );
    }

    #[test]
    fn errors_name_the_line() {
        let unknown = "rules:\n  - subjects: [{namespace: a, serviceAccount: b}]\n    paths: [x]\n    capabilites: [read]\n";
        assert_eq!(error_line(unknown).0, Some(4), "{}", error_line(unknown).1);
        let bad_glob = "rules:\n  - subjects: [{namespace: a, serviceAccount: b}]\n    paths:\n      - ok/*\n      - app/a**\n    capabilities: [read]\n";
        let (line, text) = error_line(bad_glob);
        // Serde reports the list that holds the bad entry.
        assert_eq!(line, Some(4), "{text}");
        assert!(text.contains("'**' must be a whole segment"), "{text}");
        let empty = "rules:\n  - paths: [x]\n    capabilities: [read]\n    subjects: []\n";
        let (line, text) = error_line(empty);
        assert_eq!(line, Some(2), "{text}");
        assert!(text.contains("subjects must list"), "{text}");
        assert!(text.contains("at least one"), "{text}");
        let bad_ns = "rules:\n  - subjects:\n      - {namespace: \"a/b\", serviceAccount: b}\n    paths: [x]\n    capabilities: [read]\n";
        assert_eq!(error_line(bad_ns).0, Some(3), "{}", error_line(bad_ns).1);
        let bad_pod = "rules:\n  - subjects:\n      - {namespace: a, serviceAccount: b, podNamePrefix: \"\"}\n    paths: [x]\n    capabilities: [read]\n";
        assert_eq!(error_line(bad_pod).0, Some(3), "{}", error_line(bad_pod).1);
        let bad_effect = "rules:\n  - effect: maybe\n    subjects: [{namespace: a, serviceAccount: b}]\n    paths: [x]\n    capabilities: [read]\n";
        assert_eq!(
            error_line(bad_effect).0,
            Some(2),
            "{}",
            error_line(bad_effect).1
        );
    }

    #[test]
    fn breadth_is_reported_as_warnings() {
        let policy = Policy::from_yaml(
            r#"
rules:
  - name: everyone-writes-everything
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["*"]
    capabilities: [read, write]
  - name: own-folder
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["{namespace}/{serviceaccount}/*"]
    capabilities: [read]
  - name: deny-is-never-too-broad
    effect: deny
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["**"]
    capabilities: [write]
  - name: own-folder
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["ops/*"]
    capabilities: [write]
"#,
        )
        .unwrap();
        let warnings: Vec<String> = policy.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            [
                "rule everyone-writes-everything: grants write on every path",
                "rule everyone-writes-everything: grants write to every namespace",
                "rule everyone-writes-everything: grants every workload access to every path",
                "rule own-folder: the name is used by another rule: audit records will be ambiguous",
            ]
        );
    }
}
