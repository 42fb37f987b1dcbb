//! The policy matrix: identities × paths × capabilities, each with its exact
//! decision. Paths go through `SecretPath::parse` first, as in the broker, so
//! every traversal trick is refused before any decision is made.

use coffer_broker::{
    auth::WorkloadIdentity,
    path::{PathError, SecretPath},
    policy::{Capability, Decision, Policy},
};

const POLICY: &str = r#"
rules:
  - name: own-folder
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["{namespace}/{serviceaccount}/*"]
    capabilities: [read, watch]
  - name: shop-db
    subjects:
      - {namespace: shop, serviceAccount: "web-*"}
      - {namespace: shop, serviceAccount: api}
    paths: ["shop/db/*", "shop/tls"]
    capabilities: [read, watch]
  - name: canary-pods
    subjects: [{namespace: shop, serviceAccount: web, podNamePrefix: web-canary-}]
    paths: ["shop/canary/*"]
    capabilities: [read]
  - name: env-config
    subjects: [{namespace: "team-*", serviceAccount: deployer}]
    paths: ["config/*-prod/settings", "config/**/shared"]
    capabilities: [read]
  - name: ops-manages
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["*"]
    capabilities: [read, write, rotate, rollback, list, status]
  - name: no-root-ca
    effect: deny
    subjects: [{namespace: "*", serviceAccount: "*"}]
    paths: ["shop/db/root-ca", "**/private-key"]
    capabilities: [read, watch, write]
"#;

#[derive(Debug, PartialEq)]
enum Want {
    Allow(&'static str),
    Deny,
    ExplicitDeny(&'static str),
    Invalid(PathError),
}

/// Namespace, service account, pod, raw path, capability, expected outcome.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Capability,
    Want,
);

use Capability::{List, Read, Rotate, Watch, Write};
use Want::{Allow, Deny, ExplicitDeny, Invalid};

fn who(ns: &str, sa: &str, pod: Option<&str>) -> WorkloadIdentity {
    WorkloadIdentity {
        issuer: "https://issuer".into(),
        namespace: ns.into(),
        service_account: sa.into(),
        service_account_uid: None,
        pod_name: pod.map(Into::into),
        pod_uid: None,
    }
}

#[test]
fn policy_matrix() {
    let policy = Policy::from_yaml(POLICY).unwrap();
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // Templated paths: each workload reads its own folder, and only that.
        ("shop", "web", None, "shop/web/session-key", Read, Allow("own-folder")),
        ("shop", "web", None, "shop/web/a/b/c", Watch, Allow("own-folder")),
        ("payments", "api", None, "payments/api/stripe", Read, Allow("own-folder")),
        ("shop", "web", None, "shop/api/session-key", Read, Deny),
        ("payments", "api", None, "shop/api/session-key", Read, Deny),
        ("payments", "api", None, "payments/api", Read, Deny),
        ("shop", "web", None, "shop/web/session-key", Write, Deny),
        // A hostile identity value is literal, never a glob or a path.
        ("shop", "web/x", None, "shop/web/x/y", Read, Deny),
        ("shop", "*", None, "shop/web/x", Read, Deny),
        // Subjects: exact and glob service accounts, several per rule.
        ("shop", "web-frontend", None, "shop/db/password", Read, Allow("shop-db")),
        ("shop", "api", None, "shop/db/password", Watch, Allow("shop-db")),
        ("shop", "web", None, "shop/db/password", Read, Deny),
        ("other", "api", None, "shop/db/password", Read, Deny),
        ("shop", "api", None, "shop/db/password", Write, Deny),
        // Exact and prefix paths stop at '/' boundaries.
        ("shop", "api", None, "shop/tls", Read, Allow("shop-db")),
        ("shop", "api", None, "shop/tls/key", Read, Deny),
        ("shop", "api", None, "shop/tlsx", Read, Deny),
        ("shop", "api", None, "shop/dbx/password", Read, Deny),
        ("shop", "api", None, "shop/db/a/b/c", Read, Allow("shop-db")),
        ("shop", "api", None, "shop/db", Read, Deny),
        ("shop", "api", None, "shop/tls#cert", Read, Allow("shop-db")),
        // Pod name prefix.
        ("shop", "web", Some("web-canary-1"), "shop/canary/flag", Read, Allow("canary-pods")),
        ("shop", "web", Some("web-0"), "shop/canary/flag", Read, Deny),
        ("shop", "web", None, "shop/canary/flag", Read, Deny),
        ("shop", "web", Some("web-canary-1"), "shop/canary/flag", Watch, Deny),
        // Single-segment globs never cross '/'; '**' does.
        ("team-a", "deployer", None, "config/eu-prod/settings", Read, Allow("env-config")),
        ("team-a", "deployer", None, "config/eu/x-prod/settings", Read, Deny),
        ("team-a", "deployer", None, "config/eu-prod/x/settings", Read, Deny),
        ("team-a", "deployer", None, "config/eu-staging/settings", Read, Deny),
        ("team-a", "deployer", None, "config/a/b/shared", Read, Allow("env-config")),
        ("team-b", "deployer", None, "config/shared", Read, Allow("env-config")),
        ("team-a", "deployer", None, "config/sharedx", Read, Deny),
        ("team", "deployer", None, "config/eu-prod/settings", Read, Deny),
        ("team-a", "deployer-2", None, "config/eu-prod/settings", Read, Deny),
        // Deny beats any allow, and only for the capabilities it names.
        ("ops", "admin", None, "shop/db/password", Write, Allow("ops-manages")),
        ("ops", "admin", None, "shop/db/root-ca", Read, ExplicitDeny("no-root-ca")),
        ("shop", "web-frontend", None, "shop/db/root-ca", Watch, ExplicitDeny("no-root-ca")),
        ("shop", "web-frontend", None, "shop/db/root-ca#pem", Read, ExplicitDeny("no-root-ca")),
        ("ops", "admin", None, "shop/certs/private-key", Write, ExplicitDeny("no-root-ca")),
        ("ops", "admin", None, "private-key", Read, ExplicitDeny("no-root-ca")),
        ("shop", "web", None, "shop/web/private-key", Read, ExplicitDeny("no-root-ca")),
        ("ops", "admin", None, "shop/certs/private-key", List, Allow("ops-manages")),
        ("ops", "admin", None, "shop/certs/private-key-old", Rotate, Allow("ops-manages")),
        ("ops", "auditor", None, "shop/db/password", Read, Deny),
        // Traversal and spelling tricks never reach the policy.
        ("ops", "admin", None, "shop/db/../../ops/x", Read, Invalid(PathError::DotSegment)),
        ("shop", "web", None, "shop/web/../api/x", Read, Invalid(PathError::DotSegment)),
        ("shop", "web", None, "shop/web/./x", Read, Invalid(PathError::DotSegment)),
        ("shop", "web", None, "/shop/web/x", Read, Invalid(PathError::EmptySegment)),
        ("shop", "web", None, "shop//web/x", Read, Invalid(PathError::EmptySegment)),
        ("shop", "web", None, "shop/web/x/", Read, Invalid(PathError::EmptySegment)),
        ("shop", "web", None, "shop/web/%2e%2e/api", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop/web/x%00", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop/web/x\0", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop/web/x\n", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop\\web\\x", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop/web/*", Read, Invalid(PathError::BadCharacter)),
        ("shop", "web", None, "shop/web/x#../k", Read, Invalid(PathError::BadKey)),
    ];
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for (ns, sa, pod, raw, capability, want) in cases {
        let got = match SecretPath::parse(raw) {
            Err(e) => Invalid(e),
            Ok(path) => match policy.decide(&who(ns, sa, *pod), &path, *capability) {
                Decision::Allow { rule } => Allow(leak(rule)),
                Decision::Deny => Deny,
                Decision::ExplicitDeny { rule } => ExplicitDeny(leak(rule)),
            },
        };
        if &got != want {
            failures.push(format!(
                "{ns}/{sa} pod={pod:?} {capability:?} {raw:?}: want {want:?}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The rule names above are all `'static`; map back to them for comparison.
fn leak(rule: std::sync::Arc<str>) -> &'static str {
    [
        "own-folder",
        "shop-db",
        "canary-pods",
        "env-config",
        "ops-manages",
        "no-root-ca",
    ]
    .into_iter()
    .find(|r| *r == &*rule)
    .unwrap_or("<unknown rule>")
}

#[test]
fn an_empty_policy_denies_everything() {
    let path = SecretPath::parse("any/path").unwrap();
    for capability in Capability::ALL {
        assert_eq!(
            Policy::deny_all().decide(&who("ops", "admin", None), &path, capability),
            Decision::Deny
        );
    }
}
