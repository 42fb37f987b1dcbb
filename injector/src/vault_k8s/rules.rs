//! The rule for every annotation vault-k8s defines (its
//! `agent-inject/agent/annotations.go`): translated into Coffer's
//! annotations with the same meaning, ignored (Vault Agent's plumbing, with
//! a warning in the admission response), or refused with what to write
//! instead. This table is the one place: docs/deploy.md's table is
//! [`markdown_table`]'s output, checked by a test.

/// Which annotations a row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `vault.hashicorp.com/NAME` exactly.
    Pod,
    /// `vault.hashicorp.com/NAME-<secret>`.
    Secret,
    /// `vault.hashicorp.com/NAME-<anything>`.
    Prefix,
}

/// What becomes of an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Translated; the text says into what.
    Translated(&'static str),
    /// Ignored, with a warning; the text says why.
    Ignored(&'static str),
    /// Refused; the text says what to write instead.
    Refused(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The name after `vault.hashicorp.com/` (before `-<secret>`).
    pub name: &'static str,
    /// Which annotations it covers.
    pub scope: Scope,
    /// What becomes of them.
    pub rule: Rule,
}

const fn row(name: &'static str, scope: Scope, rule: Rule) -> Row {
    Row { name, scope, rule }
}

use Rule::{Ignored, Refused, Translated};
use Scope::{Pod, Prefix, Secret};

const CONNECTION: &str = "the sidecar reaches the broker at the injector's URL with its CA; the broker holds the Vault connection";
const AUTH: &str = "the sidecar authenticates with its projected service-account token; grant the paths in the Coffer policy";
const AGENT: &str = "a Vault Agent process setting; the sidecar has its own";
const CACHE: &str =
    "no Vault Agent cache: the broker reads each Vault path once for every pod watching it";
const TEMPLATING: &str = "the broker pushes each change and renews leases itself (docs/dynamic.md)";

/// Every vault-k8s annotation, in the order of vault-k8s's source.
pub const ROWS: &[Row] = &[
    row(
        "agent-inject-status",
        Pod,
        Ignored("vault-k8s's mark of an injected pod; Coffer's is coffer.dev/injected"),
    ),
    row(
        "agent-inject",
        Pod,
        Translated(
            "the label `coffer.dev/inject: \"true\"` (the webhook's objectSelector); `false` with Coffer's label is a conflict",
        ),
    ),
    row(
        "agent-inject-secret",
        Secret,
        Translated(
            "`coffer.dev/secret-<name>` (`MOUNT/data/P` → `P`; other paths as written, mapped by the broker's `mounts:`) and vault-k8s's default template; `<name>` lower-cased as vault-k8s does; the files in `/vault/secrets` unless `secret-volume-path` says otherwise",
        ),
    ),
    row(
        "agent-inject-file",
        Secret,
        Translated(
            "`coffer.dev/file-<name>` (a plain file name; a sub-directory is refused: use `secret-volume-path-<name>`)",
        ),
    ),
    row(
        "agent-inject-perms",
        Secret,
        Translated("`coffer.dev/mode-<name>`"),
    ),
    row(
        "agent-inject-template",
        Secret,
        Translated(
            "`coffer.dev/template-<name>`, converted to minijinja with the same output; `\"\"` is vault-k8s's default template",
        ),
    ),
    row(
        "agent-inject-containers",
        Pod,
        Translated("`coffer.dev/containers`: only these containers mount the files"),
    ),
    row(
        "agent-inject-default-template",
        Pod,
        Translated(
            "the default template (`map` or `json`) written as `coffer.dev/template-<name>`",
        ),
    ),
    row(
        "agent-inject-template-file",
        Secret,
        Refused(super::translate::TEMPLATE_FILE),
    ),
    row(
        "agent-template-left-delim",
        Secret,
        Translated("the delimiter the template is read with"),
    ),
    row(
        "agent-template-right-delim",
        Secret,
        Translated("the delimiter the template is read with"),
    ),
    row(
        "agent-inject-token",
        Pod,
        Refused(
            "`true`: the app gets no Vault token; it reads its files, or the broker through the SDK with its own token (docs/auth.md); `false` is ignored",
        ),
    ),
    row(
        "agent-inject-command",
        Secret,
        Translated(
            "`coffer.dev/action-<name>`: `pkill -SIG NAME` → `{signal: SIG, processName: NAME}`, `kill -SIG $(cat FILE)` → `{signal: SIG, pidFile: FILE}`, `curl -X POST http://…` → `{post: …}`; other commands are refused (the sidecar image has no shell)",
        ),
    ),
    row(
        "agent-image",
        Pod,
        Ignored("the sidecar image is the injector's `--sidecar-image`"),
    ),
    row("agent-request-namespace", Pod, Ignored(CONNECTION)),
    row(
        "agent-init-first",
        Pod,
        Ignored("the sidecar's init container always runs first"),
    ),
    row(
        "agent-pre-populate",
        Pod,
        Ignored("the files are always written before the app starts"),
    ),
    row(
        "agent-pre-populate-only",
        Pod,
        Translated("`coffer.dev/sidecar-mode: init-only`"),
    ),
    row(
        "agent-configmap",
        Pod,
        Refused(
            "a Vault Agent configuration has no counterpart: write each of its templates as `coffer.dev/secret-<name>` and `coffer.dev/template-<name>`",
        ),
    ),
    row("agent-extra-secret", Pod, Ignored(AUTH)),
    row(
        "agent-limits-cpu",
        Pod,
        Translated("`coffer.dev/sidecar-limits-cpu`"),
    ),
    row(
        "agent-limits-mem",
        Pod,
        Translated("`coffer.dev/sidecar-limits-memory`"),
    ),
    row(
        "agent-limits-ephemeral",
        Pod,
        Translated("`coffer.dev/sidecar-limits-ephemeral-storage`"),
    ),
    row(
        "agent-requests-cpu",
        Pod,
        Translated("`coffer.dev/sidecar-requests-cpu`"),
    ),
    row(
        "agent-requests-mem",
        Pod,
        Translated("`coffer.dev/sidecar-requests-memory`"),
    ),
    row(
        "agent-requests-ephemeral",
        Pod,
        Translated("`coffer.dev/sidecar-requests-ephemeral-storage`"),
    ),
    row(
        "agent-revoke-on-shutdown",
        Pod,
        Ignored("the broker revokes a pod's dynamic credentials after it leaves (docs/dynamic.md)"),
    ),
    row(
        "agent-revoke-grace",
        Pod,
        Ignored("the broker revokes a pod's dynamic credentials after it leaves (docs/dynamic.md)"),
    ),
    row("namespace", Pod, Ignored(CONNECTION)),
    row(
        "agent-run-as-user",
        Pod,
        Translated("`coffer.dev/run-as-user` (not 0: the sidecar never runs as root)"),
    ),
    row(
        "agent-run-as-group",
        Pod,
        Translated("`coffer.dev/run-as-group`"),
    ),
    row(
        "agent-run-as-same-user",
        Pod,
        Translated("Coffer's default: the sidecar runs as the app's non-root uid"),
    ),
    row(
        "agent-share-process-namespace",
        Pod,
        Translated("`coffer.dev/share-process-namespace`"),
    ),
    row(
        "agent-set-security-context",
        Pod,
        Ignored("the sidecar always runs non-root, read-only, without capabilities"),
    ),
    row(
        "agent-service-account-token-volume-name",
        Pod,
        Ignored("the injector mounts its own projected token (audience `coffer`)"),
    ),
    row("service", Pod, Ignored(CONNECTION)),
    row("proxy-address", Pod, Ignored(CONNECTION)),
    row("tls-skip-verify", Pod, Ignored(CONNECTION)),
    row("tls-secret", Pod, Ignored(CONNECTION)),
    row("tls-server-name", Pod, Ignored(CONNECTION)),
    row("ca-cert", Pod, Ignored(CONNECTION)),
    row("ca-key", Pod, Ignored(CONNECTION)),
    row("client-cert", Pod, Ignored(CONNECTION)),
    row("client-key", Pod, Ignored(CONNECTION)),
    row("client-max-retries", Pod, Ignored(CONNECTION)),
    row("client-timeout", Pod, Ignored(CONNECTION)),
    row("go-max-procs", Pod, Ignored(AGENT)),
    row("log-level", Pod, Ignored(AGENT)),
    row("log-format", Pod, Ignored(AGENT)),
    row("role", Pod, Ignored(AUTH)),
    row("auth-type", Pod, Ignored(AUTH)),
    row("auth-path", Pod, Ignored(AUTH)),
    row("auth-config", Prefix, Ignored(AUTH)),
    row(
        "secret-volume-path",
        Pod,
        Translated("`coffer.dev/mount-path`: where the app containers mount the files"),
    ),
    row(
        "secret-volume-path",
        Secret,
        Translated(
            "`coffer.dev/mount-path-<name>`: the app containers also mount the files there (the directory shows the pod's other files too)",
        ),
    ),
    row(
        "preserve-secret-case",
        Pod,
        Translated("file names keep their case"),
    ),
    row(
        "preserve-secret-case",
        Secret,
        Translated("this secret's file name keeps its case"),
    ),
    row("agent-cache-enable", Pod, Ignored(CACHE)),
    row("agent-cache-use-auto-auth-token", Pod, Ignored(CACHE)),
    row("agent-cache-listener-port", Pod, Ignored(CACHE)),
    row("agent-cache-exit-on-err", Pod, Ignored(CACHE)),
    row(
        "agent-copy-volume-mounts",
        Pod,
        Ignored("the sidecar reads no file of the app"),
    ),
    row(
        "template-config-exit-on-retry-failure",
        Pod,
        Ignored(TEMPLATING),
    ),
    row(
        "template-static-secret-render-interval",
        Pod,
        Ignored(TEMPLATING),
    ),
    row(
        "template-max-connections-per-host",
        Pod,
        Ignored(TEMPLATING),
    ),
    row("template-lease-renewal-threshold", Pod, Ignored(TEMPLATING)),
    row(
        "agent-enable-quit",
        Pod,
        Refused(
            "`true`: use `coffer.dev/sidecar-mode: native` (the sidecar stops after the app, Kubernetes 1.29+) or `init-only` for Jobs; `false` is ignored",
        ),
    ),
    row("auth-min-backoff", Pod, Ignored(AUTH)),
    row("auth-max-backoff", Pod, Ignored(AUTH)),
    row("agent-disable-idle-connections", Pod, Ignored(AGENT)),
    row("agent-disable-keep-alives", Pod, Ignored(AGENT)),
    row(
        "agent-json-patch",
        Pod,
        Refused(
            "a JSON patch of Vault Agent's container has no counterpart: set resources and users with the `coffer.dev/` annotations",
        ),
    ),
    row(
        "agent-init-json-patch",
        Pod,
        Refused(
            "a JSON patch of Vault Agent's container has no counterpart: set resources and users with the `coffer.dev/` annotations",
        ),
    ),
    row("agent-auto-auth-exit-on-err", Pod, Ignored(AUTH)),
    row(
        "agent-telemetry",
        Prefix,
        Ignored("the sidecar's metrics are on its admin port (`/metrics`)"),
    ),
    row(
        "error-on-missing-key",
        Secret,
        Translated("always so in Coffer: a key the secret lacks is an error, never `<no value>`"),
    ),
];

/// The row of `name` (after `vault.hashicorp.com/`) and the secret name or
/// suffix it carries. Exact names first, then the longest prefix, as
/// vault-k8s matches `agent-inject-template-file-` before
/// `agent-inject-template-`.
pub fn lookup(name: &str) -> Option<(&'static Row, Option<&str>)> {
    if let Some(row) = ROWS.iter().find(|r| r.scope == Pod && r.name == name) {
        return Some((row, None));
    }
    ROWS.iter()
        .filter(|r| r.scope != Pod)
        .filter_map(|r| {
            let rest = name.strip_prefix(r.name)?.strip_prefix('-')?;
            (!rest.is_empty()).then_some((r, rest))
        })
        .max_by_key(|(r, _)| r.name.len())
        .map(|(r, rest)| (r, Some(rest)))
}

/// The table of docs/deploy.md.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| vault-k8s annotation (`vault.hashicorp.com/…`) | rule | Coffer |\n| --- | --- | --- |\n",
    );
    for row in ROWS {
        let name = match row.scope {
            Pod => row.name.to_string(),
            Secret => format!("{}-<name>", row.name),
            Prefix => format!("{}-*", row.name),
        };
        let (rule, text) = match row.rule {
            Translated(t) => ("translated", t),
            Ignored(t) => ("ignored (warning)", t),
            Refused(t) => ("refused", t),
        };
        out.push_str(&format!("| `{name}` | {rule} | {text} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Annotation…` constant of vault-k8s's
    /// agent-inject/agent/annotations.go (fetched at fbc5b1f, 2026-08-06),
    /// with whether it takes a `-<secret>` or other suffix.
    pub(crate) const VAULT_K8S: &[(&str, Scope)] = &[
        ("agent-inject-status", Pod),
        ("agent-inject", Pod),
        ("agent-inject-secret", Secret),
        ("agent-inject-file", Secret),
        ("agent-inject-perms", Secret),
        ("agent-inject-template", Secret),
        ("agent-inject-containers", Pod),
        ("agent-inject-default-template", Pod),
        ("agent-inject-template-file", Secret),
        ("agent-template-left-delim", Secret),
        ("agent-template-right-delim", Secret),
        ("agent-inject-token", Pod),
        ("agent-inject-command", Secret),
        ("agent-image", Pod),
        ("agent-request-namespace", Pod),
        ("agent-init-first", Pod),
        ("agent-pre-populate", Pod),
        ("agent-pre-populate-only", Pod),
        ("agent-configmap", Pod),
        ("agent-extra-secret", Pod),
        ("agent-limits-cpu", Pod),
        ("agent-limits-mem", Pod),
        ("agent-limits-ephemeral", Pod),
        ("agent-requests-cpu", Pod),
        ("agent-requests-mem", Pod),
        ("agent-requests-ephemeral", Pod),
        ("agent-revoke-on-shutdown", Pod),
        ("agent-revoke-grace", Pod),
        ("namespace", Pod),
        ("agent-run-as-user", Pod),
        ("agent-run-as-group", Pod),
        ("agent-run-as-same-user", Pod),
        ("agent-share-process-namespace", Pod),
        ("agent-set-security-context", Pod),
        ("agent-service-account-token-volume-name", Pod),
        ("service", Pod),
        ("proxy-address", Pod),
        ("tls-skip-verify", Pod),
        ("tls-secret", Pod),
        ("tls-server-name", Pod),
        ("ca-cert", Pod),
        ("ca-key", Pod),
        ("client-cert", Pod),
        ("client-key", Pod),
        ("client-max-retries", Pod),
        ("client-timeout", Pod),
        ("go-max-procs", Pod),
        ("log-level", Pod),
        ("log-format", Pod),
        ("role", Pod),
        ("auth-type", Pod),
        ("auth-path", Pod),
        ("auth-config", Prefix),
        ("secret-volume-path", Pod),
        ("secret-volume-path", Secret),
        ("preserve-secret-case", Pod),
        ("preserve-secret-case", Secret),
        ("agent-cache-enable", Pod),
        ("agent-cache-use-auto-auth-token", Pod),
        ("agent-cache-listener-port", Pod),
        ("agent-cache-exit-on-err", Pod),
        ("agent-copy-volume-mounts", Pod),
        ("template-config-exit-on-retry-failure", Pod),
        ("template-static-secret-render-interval", Pod),
        ("template-max-connections-per-host", Pod),
        ("template-lease-renewal-threshold", Pod),
        ("agent-enable-quit", Pod),
        ("auth-min-backoff", Pod),
        ("auth-max-backoff", Pod),
        ("agent-disable-idle-connections", Pod),
        ("agent-disable-keep-alives", Pod),
        ("agent-json-patch", Pod),
        ("agent-init-json-patch", Pod),
        ("agent-auto-auth-exit-on-err", Pod),
        ("agent-telemetry", Prefix),
        ("error-on-missing-key", Secret),
    ];

    #[test]
    fn every_vault_k8s_annotation_has_exactly_one_row() {
        for &(name, scope) in VAULT_K8S {
            let rows = ROWS
                .iter()
                .filter(|r| r.name == name && r.scope == scope)
                .count();
            assert_eq!(rows, 1, "{name} {scope:?}");
        }
        for row in ROWS {
            assert!(
                VAULT_K8S.contains(&(row.name, row.scope)),
                "{} is not vault-k8s's",
                row.name
            );
        }
    }

    #[test]
    fn lookup_prefers_exact_names_then_the_longest_prefix() {
        let (row, name) = lookup("agent-inject-template-file-foo").unwrap();
        assert_eq!(
            (row.name, name),
            ("agent-inject-template-file", Some("foo"))
        );
        let (row, name) = lookup("agent-inject-template-foo").unwrap();
        assert_eq!((row.name, name), ("agent-inject-template", Some("foo")));
        let (row, name) = lookup("agent-inject-containers").unwrap();
        assert_eq!((row.name, name), ("agent-inject-containers", None));
        let (row, name) = lookup("secret-volume-path-db").unwrap();
        assert_eq!(
            (row.name, row.scope, name),
            ("secret-volume-path", Secret, Some("db"))
        );
        assert_eq!(lookup("agent-inject-templat-foobar"), None);
        assert_eq!(lookup("agent-inject-secret-"), None);
    }

    #[test]
    fn docs_deploy_md_holds_the_table() {
        let docs = include_str!("../../../docs/deploy.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/deploy.md's vault-k8s table differs from the code's; paste:\n{}",
            markdown_table()
        );
    }
}
