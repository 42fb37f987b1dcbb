//! `cofferctl migrate`: YAML in (a file or stdin), YAML out with every
//! other document and field kept, the report on stderr, and the exit codes
//! docs/cli.md gives (0; 1 with --check when anything is refused; 2 for
//! input that is not YAML).

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use coffer_tests::binary;

/// `cofferctl migrate ARGS` with `stdin`: exit code, stdout, stderr.
fn migrate(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(binary("cofferctl"))
        .arg("migrate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const STATEFUL_SET: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: db
spec:
  ports:
  - port: 5432
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  template:
    metadata:
      annotations:
        vault.hashicorp.com/agent-inject: "true"
        vault.hashicorp.com/agent-inject-secret-Creds: secret/data/shop/db
        vault.hashicorp.com/agent-inject-perms-Creds: "0440"
        vault.hashicorp.com/agent-inject-command-Creds: sh -c 'kill -HUP $(pidof postgres)'
        vault.hashicorp.com/agent-cache-enable: "true"
    spec:
      containers:
      - name: db
        image: postgres:16
"#;

#[test]
fn stdin_in_yaml_out_with_the_other_documents_kept() {
    let (code, yaml, report) = migrate(&["-"], STATEFUL_SET);
    assert_eq!(code, 0, "{report}");
    assert!(
        yaml.starts_with("apiVersion: v1\nkind: Service\n"),
        "{yaml}"
    );
    assert_eq!(yaml.matches("\n---\n").count(), 1, "{yaml}");
    assert!(yaml.contains("coffer.dev/secret-creds: shop/db"), "{yaml}");
    assert!(yaml.contains("coffer.dev/mode-creds: '0440'"), "{yaml}");
    assert!(
        yaml.contains("coffer.dev/mount-path: /vault/secrets"),
        "{yaml}"
    );
    // The refused command stays, so the injector refuses the pod too.
    assert!(
        yaml.contains("vault.hashicorp.com/agent-inject-command-Creds"),
        "{yaml}"
    );
    assert!(!yaml.contains("agent-cache-enable"), "{yaml}");
    assert!(
        report.starts_with("StatefulSet/db (document 2):\n"),
        "{report}"
    );
    assert!(
        report.contains("refused    vault.hashicorp.com/agent-inject-command-Creds: "),
        "{report}"
    );
    assert!(
        report.contains("ignored    vault.hashicorp.com/agent-cache-enable: "),
        "{report}"
    );
    assert!(
        report.ends_with("3 translated, 0 converted, 1 ignored, 1 refused\n"),
        "{report}"
    );
}

#[test]
fn check_exits_1_on_a_refusal_and_prints_no_yaml() {
    let (code, yaml, report) = migrate(&["--check", "-"], STATEFUL_SET);
    assert_eq!(code, 1, "{report}");
    assert!(yaml.is_empty(), "{yaml}");
    let fixed = STATEFUL_SET.replace("sh -c 'kill -HUP $(pidof postgres)'", "pkill -HUP postgres");
    let (code, _, report) = migrate(&["--check", "-"], &fixed);
    assert_eq!(code, 0, "{report}");
}

#[test]
fn input_that_is_not_yaml_is_a_usage_error() {
    let (code, _, stderr) = migrate(&["-"], "kind: [Pod\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not YAML"), "{stderr}");
    let (code, _, _) = migrate(&["/nonexistent/file.yaml"], "");
    assert_eq!(code, 1);
}
