//! `coffer-sidecar --check-config`: validates the configuration and exits,
//! 0 when valid and 64 (EX_USAGE) when not, without contacting a broker or
//! writing a file.

use std::process::Command;

use coffer_tests::binary;

fn check(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::Builder::new()
        .prefix("coffer-check-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let file = dir.path().join("sidecar.yaml");
    std::fs::write(
        &file,
        config.replace("OUT", &out.path().display().to_string()),
    )
    .unwrap();
    let output = Command::new(binary("coffer-sidecar"))
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()
        .unwrap();
    // Nothing is written by a check.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_valid_config_exits_zero_without_a_broker() {
    // Port 9 (discard) on loopback: nothing listens, and nothing is tried.
    let (code, log) = check(
        "broker: http://127.0.0.1:9\ntokenFile: /nonexistent/token\noutputDir: OUT\nsecrets:\n  - {path: shop/db#password, file: password}\n",
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("configuration valid"), "{log}");
}

#[test]
fn an_invalid_config_exits_64() {
    let (code, log) = check(
        "broker: http://127.0.0.1:9\noutputDir: OUT\nsecrets:\n  - {path: ../escape, file: ../../etc/passwd}\n",
    );
    assert_eq!(code, Some(64), "{log}");
}

#[test]
fn a_group_writable_or_executable_secret_file_is_refused() {
    for mode in ["0666", "0620", "0755"] {
        let (code, log) = check(&format!(
            "broker: http://127.0.0.1:9\noutputDir: OUT\nsecrets:\n  - {{path: shop/db#password, file: password, mode: \"{mode}\"}}\n"
        ));
        assert_eq!(code, Some(64), "{mode}: {log}");
        assert!(
            log.contains("writable by their owner only"),
            "{mode}: {log}"
        );
    }
    let (code, log) = check(
        "broker: http://127.0.0.1:9\noutputDir: OUT\nsecrets:\n  - {path: shop/db#password, file: password, mode: \"0644\"}\n",
    );
    assert_eq!(code, Some(0), "{log}");
}
