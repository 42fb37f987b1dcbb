//! The HMAC-keyed audit chain: verifiable with the key only; the chain head
//! is logged so records cut off the end can be detected.

use std::{ffi::OsStr, path::Path, time::Duration};

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, audit_verify, eventually, mint};

fn verify(file: &Path, key: Option<&Path>) -> (i32, String) {
    let mut args = Vec::new();
    if let Some(key) = key {
        args.extend([OsStr::new("--hmac-key-file"), key.as_os_str()]);
    }
    args.push(file.as_os_str());
    audit_verify(args)
}

async fn keyed_broker(dir: &Path) -> BrokerProcess {
    let audit = dir.join("audit.log");
    let key = dir.join("audit.key");
    std::fs::write(&key, b"only the auditors read this").unwrap();
    let broker = BrokerProcess::builder()
        .audit_file(&audit)
        .args([
            "--audit-hmac-key-file",
            key.to_str().unwrap(),
            "--audit-head-interval",
            "1s",
        ])
        .start();
    broker.put_bytes("shop/db", b"v").await;
    let intruder = broker.client(mint(Key::Rsa, "shop", "intruder")).await;
    assert_eq!(
        intruder.get("shop/db").await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    broker
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hmac_chain_verifies_with_the_key_and_fails_clearly_without() {
    let dir = tempfile::tempdir().unwrap();
    let _broker = keyed_broker(dir.path()).await;
    let audit = dir.path().join("audit.log");
    let (code, out) = verify(&audit, Some(&dir.path().join("audit.key")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact: 2 records"), "{out}");

    let (code, out) = verify(&audit, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--hmac-key-file"), "{out}");

    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, b"a guess").unwrap();
    let (code, out) = verify(&audit, Some(&wrong));
    assert_eq!(code, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_head_is_logged_and_matches_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = keyed_broker(dir.path()).await;
    let (code, out) = verify(
        &dir.path().join("audit.log"),
        Some(&dir.path().join("audit.key")),
    );
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap();
    let hash = first.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(hash.len(), 64, "{out}");
    eventually(Duration::from_secs(20), "the logged chain head", || {
        let log = broker.process.output();
        log.lines()
            .any(|l| {
                l.contains("audit chain head") && l.contains(&hash) && l.contains("next_seq=2")
            })
            .then_some(())
    });
}
