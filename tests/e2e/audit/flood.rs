//! Audit flooding: repeated authentication failures are counted into a few
//! records, and rotation keeps a bounded number of files whose remaining
//! trail still verifies.

use std::{path::Path, time::Duration};

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, audit_records, audit_verify, eventually, mint};
use serde_json::Value;

/// The rotated files oldest first, then the live file.
fn trail(audit: &Path) -> Vec<std::path::PathBuf> {
    let name = audit.file_name().unwrap().to_str().unwrap().to_string();
    let mut rotated: Vec<_> = std::fs::read_dir(audit.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.len() == name.len() + 7 && n.starts_with(&format!("{name}."))
        })
        .collect();
    rotated.sort();
    rotated.push(audit.to_path_buf());
    rotated
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_bad_tokens_make_a_handful_of_counted_records() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder()
        .audit_file(&audit)
        .args(["--audit-aggregate-interval", "1s"])
        .start();
    let forger = broker.client(mint(Key::ForeignRsa, "shop", "web")).await;
    for _ in 0..500 {
        assert_eq!(
            forger.get("shop/db").await.unwrap_err().code(),
            Some(Code::Unauthenticated)
        );
    }
    // The counts of the last interval are written when it ends.
    let failures = eventually(Duration::from_secs(20), "counts adding up to 500", || {
        let failures: Vec<Value> = audit_records(&audit)
            .into_iter()
            .filter(|r| r["decision"] == "deny" && r["identity"].is_null())
            .collect();
        let total: u64 = failures.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        (total == 500).then_some(failures)
    });
    assert!(
        failures.len() < 50,
        "{} records for 500 failures",
        failures.len()
    );
    for r in &failures {
        assert_eq!(r["reason"], "bad_signature");
        assert_eq!(r["rpc"], "GetSecret");
        assert!(r["peer"].as_str().unwrap().starts_with("127.0.0.1"), "{r}");
    }
    let (code, out) = audit_verify([audit]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_still_pending_are_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let mut broker = BrokerProcess::builder()
        .audit_file(&audit)
        .args(["--audit-aggregate-interval", "1h"])
        .start();
    let forger = broker.client(mint(Key::ForeignRsa, "shop", "web")).await;
    for _ in 0..20 {
        assert_eq!(
            forger.get("shop/db").await.unwrap_err().code(),
            Some(Code::Unauthenticated)
        );
    }
    drop(forger);
    broker.process.terminate();
    assert!(broker.process.wait(Duration::from_secs(20)).is_some());
    let counts: Vec<u64> = audit_records(&audit)
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 19]);
    assert!(broker.process.output().contains("audit chain head"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_at_most_n_files_and_the_pruned_trail_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder()
        .audit_file(&audit)
        .args([
            "--audit-max-bytes",
            "700",
            "--audit-keep",
            "3",
            "--audit-aggregate-interval",
            "0s",
        ])
        .start();
    let forger = broker.client(mint(Key::ForeignRsa, "shop", "web")).await;
    for _ in 0..40 {
        assert_eq!(
            forger.get("shop/db").await.unwrap_err().code(),
            Some(Code::Unauthenticated)
        );
    }
    let files = trail(&audit);
    assert_eq!(
        files.len(),
        4,
        "3 rotated files and the live one: {files:?}"
    );
    assert!(
        !files[0].to_str().unwrap().ends_with(".000001"),
        "the oldest files were pruned: {files:?}"
    );
    let first = &audit_records(&files[0])[0];
    assert!(first["seq"].as_u64().unwrap() > 0);
    let (code, out) = audit_verify(&files);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("from seq {}", first["seq"])), "{out}");
}
