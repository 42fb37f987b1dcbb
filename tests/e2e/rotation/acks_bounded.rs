//! One `AckSecrets` call costs one decision and one audit record per
//! distinct path, however often it names the path, and a call naming more
//! than 256 acknowledgements is refused (issue #22).

use coffer::{Applied, ApplyState, Code};
use coffer_tests::{BrokerProcess, Key, mint};

fn applied(path: &str, version: u64) -> Applied {
    Applied {
        path: path.into(),
        version,
        state: ApplyState::Applied,
        reason: String::new(),
    }
}

fn ack_records(audit: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(audit)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"AckSecrets\""))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_path_named_256_times_is_acknowledged_and_audited_once() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder().audit_file(&audit).start();
    broker.put_bytes("shop/db", b"v1").await;
    broker.put_bytes("shop/api", b"v1").await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;

    let mut batch: Vec<Applied> = (0..255).map(|_| applied("shop/db", 1)).collect();
    batch.push(applied("shop/db#key", 1));
    web.ack(batch).await.unwrap();
    let records = ack_records(&audit);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(records[0].contains("\"acknowledged\""), "{}", records[0]);

    // Two distinct paths: two records, whatever the repetitions.
    let batch = [
        applied("shop/api", 1),
        applied("shop/db", 1),
        applied("shop/api", 1),
    ];
    web.ack(batch.to_vec()).await.unwrap();
    assert_eq!(ack_records(&audit).len(), 3);

    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = admin.status("shop/db").await.unwrap();
    assert_eq!(status.workloads.len(), 1, "{:?}", status.workloads);
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_256_acknowledgements_in_one_call_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder().audit_file(&audit).start();
    broker.put_bytes("shop/db", b"v1").await;
    let web = broker.client(mint(Key::Rsa, "shop", "web")).await;
    let batch: Vec<Applied> = (0..257).map(|_| applied("shop/db", 1)).collect();
    let error = web.ack(batch).await.unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(error.to_string().contains("256"), "{error}");
    assert!(ack_records(&audit).is_empty());
}
