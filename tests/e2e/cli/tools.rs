//! `cofferctl` for scripts and shells: `--output json` results, exit codes by
//! category, shell completions, network flags only on network commands, and
//! `--version` naming the commit.

use std::process::Command;

use coffer_tests::{BrokerProcess, Ctl, POLICY, binary};
use serde_json::Value;

/// Runs `cofferctl` with no broker settings from the environment; returns
/// the exit code, stdout and stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("cofferctl"))
        .args(args)
        .env_remove("COFFER_BROKER")
        .env_remove("COFFER_TOKEN_FILE")
        .env_remove("COFFER_CA_FILE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn network_commands_print_json() {
    let broker = BrokerProcess::builder().start();
    let ctl = Ctl::new(&broker);
    let put = json(&ctl.ok(&["put", "shop/db", "user=app", "--output", "json"], b""));
    assert_eq!(put, serde_json::json!({"path": "shop/db", "version": 1}));
    ctl.ok(&["put", "shop/db", "user=app2"], b"");
    let get = json(&ctl.ok(&["--output", "json", "get", "shop/db"], b""));
    assert_eq!(get["version"], 2);
    assert_eq!(get["data"]["user"]["text"], "app2");
    ctl.ok(&["put", "shop/bin"], b"\xff\x00\x01");
    let bin = json(&ctl.ok(&["get", "shop/bin", "--output", "json"], b""));
    assert_eq!(bin["data"]["base64"], "/wAB");
    let versions = json(&ctl.ok(&["versions", "shop/db", "--output", "json"], b""));
    assert_eq!(versions["currentVersion"], 2);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    let list = json(&ctl.ok(&["list", "shop", "--output", "json"], b""));
    assert_eq!(list["names"], serde_json::json!(["bin", "db"]), "{list}");
    let rollback = json(&ctl.ok(&["rollback", "shop/db", "1", "--output", "json"], b""));
    assert_eq!(rollback["version"], 3);
    let status = json(&ctl.ok(&["status", "shop/db", "--output", "json"], b""));
    assert_eq!(status["currentVersion"], 3, "{status}");
}

#[test]
fn offline_commands_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let policy = policy.display().to_string();
    let (code, out, err) = run(&[
        "policy",
        "check",
        "--policy",
        &policy,
        "--namespace",
        "shop",
        "--service-account",
        "web",
        "--path",
        "shop/db",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["allowed"], true);
    let (code, out, err) = run(&["policy", "lint", &policy, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["valid"], true);
    assert_eq!(json(&out)["rules"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_name_the_category() {
    let broker = BrokerProcess::builder().start();
    let ctl = Ctl::new(&broker);
    ctl.ok(&["put", "shop/db", "user=app"], b"");
    // Not found: 3.
    let (code, _, err) = ctl.run(&["get", "shop/missing"], b"");
    assert_eq!(code, 3, "{err}");
    // Permission denied: 4 (shop/web may not write).
    let (code, _, err) = ctl.as_("shop/web", &["put", "shop/db", "user=x"], b"");
    assert_eq!(code, 4, "{err}");
    // Unauthenticated: 5 (a token the broker refuses).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("token");
    std::fs::write(&bad, "not-a-jwt").unwrap();
    let bad = bad.display().to_string();
    let (code, _, err) = run(&[
        "get",
        "shop/db",
        "--broker",
        &broker.endpoint,
        "--token-file",
        &bad,
    ]);
    assert_eq!(code, 5, "{err}");
    // Unavailable: 6 (nothing listens there).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = run(&["get", "shop/db", "--broker", &addr, "--token-file", &bad]);
    assert_eq!(code, 6, "{err}");
    // Usage: 2 (no broker given; and a bad flag).
    let (code, _, err) = run(&["get", "shop/db"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = run(&["get", "--no-such-flag"]);
    assert_eq!(code, 2);
    // The codes are documented in --help.
    let (_, help, _) = run(&["--help"]);
    for line in [
        "3  not found",
        "4  permission denied",
        "5  unauthenticated",
        "6  unavailable",
        "2  usage",
    ] {
        assert!(help.contains(line), "{line} missing from --help:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_store_has_no_leases_to_list_or_revoke() {
    let broker = BrokerProcess::builder().start();
    let ctl = Ctl::new(&broker);
    let listed = json(&ctl.ok(&["leases", "--output", "json"], b""));
    assert_eq!(
        listed,
        serde_json::json!({"leases": [], "truncated": false})
    );
    assert_eq!(ctl.ok(&["leases"], b"").trim(), "no live leases");
    let (code, _, err) = ctl.run(&["revoke", "database/creds/shop/x"], b"");
    assert_eq!(code, 3, "{err}");
    // A lease id is printable text.
    let (code, _, err) = ctl.run(&["revoke", "a b"], b"");
    assert_eq!(code, 2, "{err}");
}

#[test]
fn completions_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cofferctl"),
        ("fish", "complete -c cofferctl"),
    ] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, 0, "{err}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("rollback") && script.contains("policy"),
            "{shell}"
        );
    }
    let (code, _, _) = run(&["completions", "tcsh"]);
    assert_eq!(code, 2);
}

#[test]
fn offline_commands_do_not_take_network_flags() {
    for command in [
        &["policy", "check"][..],
        &["policy", "lint"],
        &["audit", "verify"],
        &["token", "verify"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let (code, help, _) = run(&args);
        assert_eq!(code, 0);
        for flag in ["--broker", "--token-file", "--ca-file"] {
            assert!(!help.contains(flag), "{command:?} shows {flag}:\n{help}");
        }
    }
    let (code, _, err) = run(&["policy", "lint", "x.yaml", "--broker", "http://127.0.0.1:1"]);
    assert_eq!(code, 2, "{err}");
    for command in [
        "get", "put", "rotate", "versions", "rollback", "status", "list", "delete", "leases",
        "revoke",
    ] {
        let (_, help, _) = run(&[command, "--help"]);
        assert!(
            help.contains("--broker") && help.contains("--token-file"),
            "{command}:\n{help}"
        );
    }
}

#[test]
fn version_names_the_commit() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("cofferctl "), "{out}");
    let commit = out
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {out}"));
    // A commit of this repository (the one the binary was built from),
    // or "unknown" for a build outside a git checkout.
    let known = Command::new("git")
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        known || commit == "unknown",
        "{out}: {commit} is not a commit here"
    );
    assert!(commit.len() >= 7 || commit == "unknown", "{out}");
}

#[test]
fn connection_flags_may_come_before_the_subcommand() {
    let broker = BrokerProcess::builder().start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        coffer_tests::mint(coffer_tests::Key::Rsa, "ops", "admin"),
    )
    .unwrap();
    let token = token.display().to_string();
    // As kubectl and vault users write it: flags first.
    let (code, _, err) = run(&[
        "--broker",
        &broker.endpoint,
        "--token-file",
        &token,
        "put",
        "shop/db",
        "user=app",
    ]);
    assert_eq!(code, 0, "{err}");
    // Mixed: the broker first, the token after the subcommand.
    let (code, out, err) = run(&[
        "--broker",
        &broker.endpoint,
        "versions",
        "shop/db",
        "--token-file",
        &token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains('1'), "{out}");
    // The subcommand's own flag wins over a leading one.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = run(&[
        "--broker",
        &dead,
        "versions",
        "shop/db",
        "--broker",
        &broker.endpoint,
        "--token-file",
        &token,
    ]);
    assert_eq!(code, 0, "{err}");
}
