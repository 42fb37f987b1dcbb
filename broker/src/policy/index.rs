//! The policy's index of rules by the first segment of their path
//! patterns (beside the index by namespace in `mod.rs`): a rule whose every
//! pattern starts with a plain name is looked at only for paths under one
//! of those names.

use std::collections::HashMap;

use smallvec::SmallVec;

use super::{PathPattern, Rule};

/// Rules split by the first segment of their path patterns.
#[derive(Debug, Clone, Default)]
pub(super) struct PathIndex {
    /// Rules whose every pattern starts with a plain name, by that name,
    /// ascending.
    by_first: HashMap<String, Vec<usize>>,
    /// Rules with a pattern that may start with anything (`*`, `**`, a
    /// glob or a variable in the first segment), ascending.
    any_first: Vec<usize>,
}

impl PathIndex {
    pub(super) fn add(&mut self, index: usize, rule: &Rule) {
        let firsts: Option<SmallVec<[&str; 4]>> =
            rule.paths.iter().map(PathPattern::first_literal).collect();
        let push = |list: &mut Vec<usize>| {
            if list.last() != Some(&index) {
                list.push(index);
            }
        };
        match firsts {
            Some(firsts) => {
                for first in firsts {
                    push(self.by_first.entry(first.to_string()).or_default());
                }
            }
            None => push(&mut self.any_first),
        }
    }

    /// The rules that may apply to a path starting with `first`, ascending.
    pub(super) fn candidates<'a>(&'a self, first: &str) -> impl Iterator<Item = usize> + 'a {
        let named = self.by_first.get(first).map_or(&[][..], Vec::as_slice);
        merge_ascending(named.iter().copied(), self.any_first.iter().copied())
    }
}

/// Yields the union of two ascending index sequences, ascending, without
/// repeats.
pub(super) fn merge_ascending(
    a: impl Iterator<Item = usize>,
    b: impl Iterator<Item = usize>,
) -> impl Iterator<Item = usize> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek().copied(), b.peek().copied()) {
        (Some(x), Some(y)) if x == y => {
            b.next();
            a.next()
        }
        (Some(x), Some(y)) if x < y => a.next(),
        (_, Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_ascending_order_without_repeats() {
        let merged: Vec<usize> =
            merge_ascending([1, 3, 5, 9].into_iter(), [2, 3, 8, 9, 10].into_iter()).collect();
        assert_eq!(merged, [1, 2, 3, 5, 8, 9, 10]);
        let merged: Vec<usize> = merge_ascending([].into_iter(), [4].into_iter()).collect();
        assert_eq!(merged, [4]);
    }

    fn who(ns: &str) -> crate::auth::WorkloadIdentity {
        crate::auth::WorkloadIdentity {
            issuer: "i".into(),
            namespace: ns.into(),
            service_account: "web".into(),
            service_account_uid: None,
            pod_name: None,
            pod_uid: None,
        }
    }

    fn decide(policy: &super::super::Policy, ns: &str, path: &str) -> super::super::Decision {
        let path = crate::path::SecretPath::parse(path).unwrap();
        policy.decide(&who(ns), &path, super::super::Capability::Read)
    }

    /// The index only skips rules that cannot apply: a deny rule whose
    /// pattern may start anywhere still beats an allow under a named top
    /// folder, the first allow in file order still names the grant, and a
    /// rule under another top folder never applies.
    #[test]
    fn indexing_by_first_segment_changes_no_decision() {
        let policy = super::super::Policy::from_yaml(
            r#"
rules:
  - name: glob-first-allow
    subjects: [{namespace: "*", serviceAccount: web}]
    paths: ["s*/db", "{namespace}/own"]
    capabilities: [read]
  - name: shop-allow
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*", "shared/tls"]
    capabilities: [read]
  - name: other-folder
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["billing/*"]
    capabilities: [read]
  - name: deny-private-anywhere
    effect: deny
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["**/private"]
    capabilities: [read]
"#,
        )
        .unwrap();
        use super::super::Decision;
        let allow = |rule: &str| Decision::Allow { rule: rule.into() };
        assert_eq!(
            decide(&policy, "shop", "shop/db"),
            allow("glob-first-allow")
        );
        assert_eq!(decide(&policy, "shop", "shop/cache"), allow("shop-allow"));
        assert_eq!(decide(&policy, "shop", "shared/tls"), allow("shop-allow"));
        assert_eq!(
            decide(&policy, "shop", "shop/own"),
            allow("glob-first-allow")
        );
        assert_eq!(decide(&policy, "shop", "billing/x"), allow("other-folder"));
        assert_eq!(
            decide(&policy, "shop", "shop/private"),
            Decision::ExplicitDeny {
                rule: "deny-private-anywhere".into()
            }
        );
        assert_eq!(decide(&policy, "shop", "other/x"), Decision::Deny);
        assert_eq!(decide(&policy, "ops", "billing/x"), Decision::Deny);
    }
}
