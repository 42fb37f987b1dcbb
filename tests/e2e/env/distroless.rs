//! A distroless-style run: PATH holds python3 and nothing else (no shell),
//! the value comes from OpenBao through a real broker, and `coffer-env`
//! execs the app: same pid, the value in its environment only, never in
//! its command line or any log.

use std::process::Stdio;

use coffer_tests::{POLICY, coffer_env::EnvDir, openbao::OpenBao, vault_broker};

/// Prints its pid, the values, and whether its command line holds the password.
const APP: &str = r#"
import os
pw = os.environ["DB_PASSWORD"]
cmdline = open("/proc/self/cmdline", "rb").read()
print("pid", os.getpid())
print("password", pw)
print("user", os.environ["DBMAP_USER"], os.environ["DBMAP_PASSWORD"] == pw)
print("literal", os.environ["LITERAL"])
print("plain", os.environ["PLAIN"])
print("cmdline-holds-password", pw.encode() in cmdline)
print("reference-left", any(v.startswith("coffer:") for k, v in os.environ.items() if k != "LITERAL"))
"#;

#[test]
fn the_app_runs_without_a_shell_with_the_value_from_openbao_and_nowhere_else() {
    let canary = "canary-env-6f1d2c";
    let bao = OpenBao::start();
    bao.bao(&[
        "kv",
        "put",
        "secret/shop/db",
        &format!("password={canary}"),
        "user=app",
    ]);
    let broker = vault_broker(&bao, POLICY);
    let run = EnvDir::new("web-0");
    assert!(!run.bin().join("sh").exists());

    let child = run
        .against(
            &broker,
            &[
                ("DB_PASSWORD", "coffer:shop/db#password"),
                ("DB", "coffer:shop/db"),
                ("COFFER_ENV_PREFIX_DB", "DBMAP_"),
                ("LITERAL", "\\coffer:not/a#reference"),
                ("PLAIN", "untouched"),
                ("COFFER_ENV_LOG_LEVEL", "coffer_env=debug,coffer=debug"),
            ],
            &["--", "python3", "-c", APP],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            // exec: the app is the process coffer-env was.
            format!("pid {pid}").as_str(),
            &format!("password {canary}"),
            "user app True",
            "literal coffer:not/a#reference",
            "plain untouched",
            "cmdline-holds-password False",
            "reference-left False",
        ],
        "{stderr}"
    );
    // coffer-env logged at debug, and the broker at debug: neither holds it.
    assert!(stderr.contains("environment resolved"), "{stderr}");
    assert!(!stderr.contains(canary), "{stderr}");
    assert!(!broker.process.output().contains(canary));
}
