//! The policy most tests run under, written once: the workload `shop/web`
//! reads and watches `shop/*`; the operator `ops/admin` manages it.

/// The default test policy: `shop/web` reads `shop/*`; `ops/admin` manages `shop/*`.
pub const POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, rotate, rollback, list, status]
"#;

/// What `ops/admin` may do on `shop/*` in [`POLICY`].
pub const ADMIN: &[&str] = &["read", "write", "rotate", "rollback", "list", "status"];

/// [`POLICY`] with `rules` (made by [`rule`]) after its own: rules add up,
/// so a test grants one more identity, or `ops/admin` one more capability,
/// without pasting the policy again.
pub fn policy_with(rules: &[String]) -> String {
    format!("{POLICY}{}", rules.concat())
}

/// A policy of `rules` alone (made by [`rule`]).
pub fn policy_of(rules: &[String]) -> String {
    format!("rules:\n{}", rules.concat())
}

/// One policy rule: `subject` (`namespace/serviceAccount`) may use
/// `capabilities` on `paths`.
pub fn rule(name: &str, subject: &str, paths: &[&str], capabilities: &[&str]) -> String {
    let (namespace, service_account) = subject
        .split_once('/')
        .unwrap_or_else(|| panic!("{subject}: not namespace/serviceAccount"));
    let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "  - name: {name}\n    subjects: [{{namespace: {namespace}, serviceAccount: {service_account}}}]\n    paths: [{}]\n    capabilities: [{}]\n",
        paths.join(", "),
        capabilities.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_as_the_rules_of_the_shared_policy() {
        let rules = [
            rule(
                "web-reads-shop",
                "shop/web",
                &["shop/*"],
                &["read", "watch"],
            ),
            rule("admin-manages-shop", "ops/admin", &["shop/*"], ADMIN),
        ];
        assert_eq!(format!("\n{}", policy_of(&rules)), POLICY);
    }
}
