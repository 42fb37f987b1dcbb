//! `coffer-broker --log-level`: sets the log filter beside `RUST_LOG`, and
//! a filter that does not parse is a usage error (64).

use std::process::Command;

use coffer_tests::{BrokerProcess, POLICY, binary, fixture};

#[test]
fn warn_level_hides_the_info_lines() {
    let quiet = BrokerProcess::builder()
        .args(["--log-level", "warn"])
        .start();
    // Up (its address file is written) and warning about the dev store...
    quiet.wait_for_log("NOT FOR PRODUCTION", 1);
    // ...but not logging its INFO line "broker listening", which the default shows.
    let output = quiet.process.output();
    assert!(!output.contains("broker listening"), "{output}");
    let default = BrokerProcess::builder().start();
    default.wait_for_log("broker listening", 1);
}

#[test]
fn an_unparsable_level_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let output = Command::new(binary("coffer-broker"))
        .args([
            "--log-level",
            "info,[[[",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "x",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--jwks")
        .arg(fixture("jwks-a.json"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--log-level"));
}
