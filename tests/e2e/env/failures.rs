//! Failing closed: a denied path, a missing key and an unreachable broker
//! each exit non-zero naming the variable and the path, never a value, and
//! the app never starts.

use std::process::Output;

use coffer_tests::{BrokerProcess, POLICY, coffer_env::EnvDir, free_port};

const CANARY: &str = "canary-failure-93e0";

/// Runs `coffer-env` with `vars` and an app that would leave a marker file.
fn run(run: &EnvDir, endpoint: &str, vars: &[(&str, &str)], args: &[&str]) -> (Output, bool) {
    let marker = run.path("app-started");
    let script = format!("open({:?}, 'w')", marker.display().to_string());
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--", "python3", "-c", &script]);
    let out = run.command(endpoint, vars, &all).output().unwrap();
    (out, marker.exists())
}

fn assert_refused(out: &Output, started: bool, names: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(!started, "the app started: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "{name} not in: {stderr}");
    }
    assert!(!stderr.contains(CANARY), "{stderr}");
    assert!(out.stdout.is_empty());
    stderr
}

async fn broker() -> BrokerProcess {
    let broker = BrokerProcess::builder().policy(POLICY).start();
    broker
        .put_map("shop/db", &[("password", CANARY), ("user", "app")])
        .await;
    broker
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_path_fails_naming_the_variable_and_path() {
    let broker = broker().await;
    let dir = EnvDir::new("web-0");
    let vars = [
        ("DB_PASSWORD", "coffer:shop/db#password"),
        ("PAYMENT_KEY", "coffer:payments/stripe#key"),
    ];
    let (out, started) = run(&dir, &broker.endpoint, &vars, &[]);
    let stderr = assert_refused(&out, started, &["PAYMENT_KEY", "payments/stripe"]);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_fails_naming_the_variable_path_and_key() {
    let broker = broker().await;
    let dir = EnvDir::new("web-0");
    let vars = [
        ("DB_PASSWORD", "coffer:shop/db#password"),
        ("DB_HOST", "coffer:shop/db#host"),
    ];
    let (out, started) = run(&dir, &broker.endpoint, &vars, &[]);
    assert_refused(&out, started, &["DB_HOST", "shop/db#host", "has no key"]);
}

#[test]
fn an_unreachable_broker_fails_after_the_timeout_naming_every_reference() {
    let dir = EnvDir::new("web-0");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let vars = [
        ("DB_PASSWORD", "coffer:shop/db#password"),
        ("API", "coffer:shop/api"),
    ];
    let (out, started) = run(&dir, &endpoint, &vars, &["--timeout=2s"]);
    assert_refused(
        &out,
        started,
        &[
            "cannot reach the broker",
            "DB_PASSWORD (coffer:shop/db)",
            "API (coffer:shop/api)",
        ],
    );
}

#[test]
fn a_malformed_reference_is_a_usage_error() {
    let dir = EnvDir::new("web-0");
    let vars = [("DB_PASSWORD", "coffer:shop/db#")];
    let (out, started) = run(&dir, "http://127.0.0.1:1", &vars, &[]);
    assert_refused(&out, started, &["DB_PASSWORD: the key after # is empty"]);
    assert_eq!(out.status.code(), Some(64));
}
