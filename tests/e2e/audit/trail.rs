//! The audit trail: one hash-chained JSON line per decision, auth failures
//! included, never a value or a token; tampering is found; an unwritable
//! trail refuses requests.

use std::{ffi::OsStr, path::Path};

use coffer::{Code, SecretBytes, SecretData};
use coffer_tests::{BrokerProcess, Key, audit_records, audit_verify, mint};
use serde_json::Value;

const CANARY: &str = "canary-audit-5b1e0c7a-never-record-me";

fn find<'a>(records: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    records
        .iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("no {what} record in {records:#?}"))
}

/// A broker auditing to a file, with one allowed read, one denied read and
/// one authentication failure behind it. Returns the tokens used.
async fn audited_traffic(audit: &Path) -> (BrokerProcess, Vec<String>) {
    let broker = BrokerProcess::builder().audit_file(audit).start();
    let admin_token = mint(Key::Rsa, "ops", "admin");
    let web_token = mint(Key::Ec, "shop", "web");
    let intruder_token = mint(Key::Rsa, "shop", "intruder");
    let forged_token = mint(Key::ForeignRsa, "shop", "web");
    let admin = broker.client(admin_token.clone()).await;
    admin
        .put(coffer::operator::Put::new(
            "shop/db",
            SecretData::Bytes(SecretBytes::from(CANARY.as_bytes())),
        ))
        .await
        .unwrap();
    let web = broker.client(web_token.clone()).await;
    assert_eq!(
        web.get("shop/db").await.unwrap().expose_bytes(),
        Some(CANARY.as_bytes())
    );
    let intruder = broker.client(intruder_token.clone()).await;
    assert_eq!(
        intruder.get("shop/db").await.unwrap_err().code(),
        Some(Code::PermissionDenied)
    );
    let forger = broker.client(forged_token.clone()).await;
    assert_eq!(
        forger.get("shop/db").await.unwrap_err().code(),
        Some(Code::Unauthenticated)
    );
    (
        broker,
        vec![admin_token, web_token, intruder_token, forged_token],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_deny_and_authentication_failure_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (_broker, _) = audited_traffic(&audit).await;
    let all = audit_records(&audit);

    let allow = find(&all, "allowed read", |r| {
        r["rpc"] == "GetSecret" && r["decision"] == "allow"
    });
    assert_eq!(allow["identity"]["namespace"], "shop");
    assert_eq!(allow["identity"]["service_account"], "web");
    assert_eq!(allow["identity"]["pod"], "web-0");
    assert_eq!(allow["path"], "shop/db");
    assert_eq!(allow["capability"], "read");
    assert_eq!(allow["version"], 1);
    assert_eq!(allow["rule"], "web-reads-shop");
    assert_eq!(allow["reason"], "allowed");
    assert!(allow["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(allow["request_id"].as_str().unwrap().len(), 32);
    assert!(allow["time"].as_str().unwrap().ends_with('Z'));

    let deny = find(&all, "denied read", |r| {
        r["decision"] == "deny" && r["identity"]["service_account"] == "intruder"
    });
    assert_eq!(deny["reason"], "no_matching_rule");
    assert_eq!(deny["path"], "shop/db");
    assert_eq!(deny["rule"], Value::Null);
    assert_eq!(deny["version"], Value::Null);

    let failed = find(&all, "authentication failure", |r| {
        r["decision"] == "deny" && r["identity"].is_null()
    });
    assert_eq!(failed["rpc"], "GetSecret");
    assert_eq!(failed["reason"], "bad_signature");

    let write = find(&all, "write", |r| r["rpc"] == "PutSecret");
    assert_eq!(write["rule"], "admin-manages-shop");

    // The chain is intact and numbered from 0.
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], i as u64);
    }
    let (code, out) = audit_verify([&audit]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("intact: {} records", all.len())),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn neither_the_value_nor_any_token_reaches_the_audit_file() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (broker, tokens) = audited_traffic(&audit).await;
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.is_empty());
    assert!(!text.contains(CANARY), "the secret value was recorded");
    for token in &tokens {
        // Not the token, nor its signature alone.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!text.contains(token.as_str()), "a token was recorded");
        assert!(!text.contains(signature), "a token signature was recorded");
    }
    assert!(!broker.process.output().contains(CANARY));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_finds_a_modified_and_a_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (broker, _) = audited_traffic(&audit).await;
    drop(broker);
    let original = std::fs::read_to_string(&audit).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(lines.len() >= 4);

    // Someone hides that the intruder was refused.
    let target = lines
        .iter()
        .position(|l| l.contains("\"intruder\""))
        .unwrap();
    assert!(target + 1 < lines.len(), "a record follows the edited one");
    let mut edited = lines.clone();
    let hidden = lines[target].replace("\"intruder\"", "\"web\"");
    edited[target] = &hidden;
    let modified = dir.path().join("modified.log");
    std::fs::write(&modified, format!("{}\n", edited.join("\n"))).unwrap();
    let (code, out) = audit_verify([&modified]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("modified.log:{}:", target + 1)) && out.contains("modified"),
        "{out}"
    );

    let mut fewer = lines.clone();
    fewer.remove(1);
    let deleted = dir.path().join("deleted.log");
    std::fs::write(&deleted, format!("{}\n", fewer.join("\n"))).unwrap();
    let (code, out) = audit_verify([&deleted]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("deleted.log:2:") && out.contains("deleted"),
        "{out}"
    );

    // The untouched file still verifies.
    assert_eq!(audit_verify([&audit]).0, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_audit_sink_refuses_requests() {
    let broker = BrokerProcess::builder()
        .audit_file("/dev/full".as_ref())
        .start();
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let error = admin
        .put(coffer::operator::Put::new(
            "shop/db",
            SecretData::Bytes(SecretBytes::from(&b"v"[..])),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::Unavailable));
    // Nothing was written: the write was refused before it happened.
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    assert_eq!(
        web.get("shop/db").await.unwrap_err().code(),
        Some(Code::Unavailable)
    );
    assert!(
        broker
            .process
            .output()
            .contains("audit record not written: refusing the request")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_serves_requests_when_the_sink_is_unwritable() {
    let broker = BrokerProcess::builder()
        .audit_file("/dev/full".as_ref())
        .args(["--audit-fail-open"])
        .start();
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    admin
        .put(coffer::operator::Put::new(
            "shop/db",
            SecretData::Bytes(SecretBytes::from(&b"v"[..])),
        ))
        .await
        .unwrap();
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    assert_eq!(
        web.get("shop/db").await.unwrap().expose_bytes(),
        Some(&b"v"[..])
    );
    assert!(broker.process.output().contains("audit record lost"));
}

/// The `anchor=NEXT_SEQ:HASH` of the broker's first `audit chain head` line.
fn opening_anchor(broker: &BrokerProcess) -> String {
    broker.wait_for_log("audit chain head", 1);
    let output = broker.process.output();
    let line = output
        .lines()
        .find(|l| l.contains("audit chain head"))
        .unwrap();
    line.split("anchor=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

#[tokio::test]
async fn a_trail_with_its_first_records_cut_is_reported_against_the_opening_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let (broker, _) = audited_traffic(&audit).await;
    let anchor = opening_anchor(&broker);
    assert!(
        anchor.starts_with("0:"),
        "a new trail opens at seq 0: {anchor}"
    );
    let whole = std::fs::read_to_string(&audit).unwrap();
    let (code, out) = audit_verify([
        OsStr::new("--anchor"),
        OsStr::new(&anchor),
        audit.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("anchored"), "{out}");

    // The first two records cut: the chain that is left is intact, and
    // without the anchor the tool says it cannot tell a cut from pruning.
    let cut = dir.path().join("cut.log");
    let rest: Vec<&str> = whole.lines().skip(2).collect();
    std::fs::write(&cut, format!("{}\n", rest.join("\n"))).unwrap();
    let (code, out) = audit_verify([&cut]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("NOT ANCHORED"), "{out}");
    // With the anchor the broker logged when it opened the trail, the cut
    // is reported with the missing records.
    let (code, out) = audit_verify([OsStr::new("--anchor"), OsStr::new(&anchor), cut.as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("records 0..1 were cut"), "{out}");
}
