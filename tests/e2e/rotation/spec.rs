//! The rotation spec stored with a secret (`coffer.rotate/*` labels) cannot
//! be used to weaken or misdirect a later `rotate` (issue #22): setting or
//! changing it needs `rotate`, a spec below 128 bits of entropy is refused
//! wherever it comes from, a spec naming a key the secret lacks writes
//! nothing, and `cofferctl rotate` says which key it changed.

use coffer::{Code, SecretData, operator::Put};
use coffer_tests::{
    BrokerProcess, Ctl, Key, mint, openbao::OpenBao, policy_with, rule, vault_broker,
};

/// `ops/writer` may write but not rotate; `ops/admin` may both.
fn policy() -> String {
    policy_with(&[rule(
        "writer-writes-shop",
        "ops/writer",
        &["shop/*"],
        &["read", "write"],
    )])
}

fn map(items: &[(&str, &str)]) -> SecretData {
    SecretData::Map(
        items
            .iter()
            .map(|(k, v)| (k.to_string(), coffer::SecretBytes::from(v.as_bytes())))
            .collect(),
    )
}

fn text(data: &SecretData, key: &str) -> String {
    String::from_utf8(data.key(key).unwrap().expose().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_without_rotate_cannot_set_or_change_the_rotation_spec() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    let writer = broker.client(mint(Key::Rsa, "ops", "writer")).await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let items = [("user", "app"), ("password", "leaked")];
    admin.put(Put::new("shop/db", map(&items))).await.unwrap();
    admin
        .rotate(coffer::operator::Rotate::new("shop/db").key("password"))
        .await
        .unwrap();

    // Planting a key the secret does not use, or a 1-bit spec: refused.
    for (label, value) in [
        ("coffer.rotate/key", "unused"),
        ("coffer.rotate/length", "1"),
        ("coffer.rotate/alphabet", "01"),
    ] {
        let error = writer
            .put(Put::new("shop/db", map(&items)).label(label, value))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some(Code::PermissionDenied), "{label}");
    }
    assert_eq!(admin.get("shop/db").await.unwrap().version(), 2);

    // Labels that are not the spec stay a writer's business, and keep the
    // stored spec: the next rotation still replaces the password.
    let version = writer
        .put(Put::new("shop/db", map(&items)).label("owner", "team-a"))
        .await
        .unwrap();
    assert_eq!(version, 3);
    let rotated = admin
        .rotate_detailed(coffer::operator::Rotate::new("shop/db"))
        .await
        .unwrap();
    assert_eq!(rotated.key.as_deref(), Some("password"));
    let secret = admin.get("shop/db").await.unwrap();
    assert_ne!(text(secret.data(), "password"), "leaked");
    assert_eq!(text(secret.data(), "user"), "app");

    // With `rotate`, a spec may be set, but not below the floor.
    let error = admin
        .put(
            Put::new("shop/db", map(&items))
                .label("coffer.rotate/length", "1")
                .label("coffer.rotate/alphabet", "01"),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument));
    assert!(error.to_string().contains("at least 128"), "{error}");
    admin
        .put(Put::new("shop/db", map(&items)).label("coffer.rotate/length", "40"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_below_128_bits_is_refused_naming_the_floor() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    let ctl = Ctl::new(&broker);
    ctl.ok(&["put", "shop/db", "user=app", "password=old"], b"");
    for weak in [
        &["--length", "1", "--alphabet", "01"][..],
        &["--length", "8"],
        &["--length", "15", "--encoding", "hex"],
    ] {
        let mut args = vec!["rotate", "shop/db", "--key", "password"];
        args.extend_from_slice(weak);
        let (code, out, err) = ctl.run(&args, b"");
        assert_ne!(code, 0, "{weak:?}: {out}");
        assert!(err.contains("at least 128"), "{weak:?}: {err}");
    }
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let secret = admin.get("shop/db").await.unwrap();
    assert_eq!(secret.version(), 1, "nothing was written");
    assert_eq!(text(secret.data(), "password"), "old");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_a_key_the_secret_lacks_is_refused_and_writes_nothing() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    let ctl = Ctl::new(&broker);
    ctl.ok(&["put", "shop/db", "user=app", "password=leaked"], b"");
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let error = admin
        .rotate(coffer::operator::Rotate::new("shop/db").key("unused"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    let (code, _, err) = ctl.run(&["rotate", "shop/db", "--key", "unused"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("no key"), "{err}");
    let secret = admin.get("shop/db").await.unwrap();
    assert_eq!(secret.version(), 1, "nothing was written");
    assert_eq!(text(secret.data(), "password"), "leaked");
}

/// A spec planted before these checks existed (or written into Vault
/// directly) is checked when it is used.
#[tokio::test(flavor = "multi_thread")]
async fn a_weak_or_misdirected_spec_stored_in_openbao_is_refused_at_rotate_time() {
    let bao = OpenBao::start();
    // Planted before the broker reads anything, so no cached copy hides it.
    for (path, spec) in [
        ("secret/shop/db", &["coffer.rotate/key=unused"][..]),
        (
            "secret/shop/api",
            &[
                "coffer.rotate/key=password",
                "coffer.rotate/length=1",
                "coffer.rotate/alphabet=01",
            ],
        ),
    ] {
        bao.bao(&["kv", "put", path, "user=app", "password=leaked"]);
        let mut args = vec!["kv".to_string(), "metadata".into(), "put".into()];
        args.extend(spec.iter().map(|s| format!("-custom-metadata={s}")));
        args.push(path.into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bao.bao(&args);
    }
    let broker = vault_broker(&bao, &policy());
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;

    let error = admin
        .rotate(coffer::operator::Rotate::new("shop/db"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    let error = admin
        .rotate(coffer::operator::Rotate::new("shop/api"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(Code::InvalidArgument), "{error}");
    assert!(error.to_string().contains("at least 128"), "{error}");

    for path in ["shop/db", "shop/api"] {
        let secret = admin.get(path).await.unwrap();
        assert_eq!(secret.version(), 1, "{path}: nothing was written");
        assert_eq!(text(secret.data(), "password"), "leaked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cofferctl_rotate_prints_the_key_it_changed() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    let ctl = Ctl::new(&broker);
    ctl.ok(&["put", "shop/db", "user=app", "password=old"], b"");
    let out = ctl.ok(&["rotate", "shop/db", "--key", "password"], b"");
    assert!(
        out.contains("shop/db: rotated to version 2 (key password)"),
        "{out}"
    );
    // The stored spec names the key the next time too.
    let json = ctl.ok(&["rotate", "shop/db", "--output", "json"], b"");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["key"], "password", "{json}");
    assert_eq!(json["version"], 3, "{json}");

    ctl.ok(&["put", "shop/session"], b"first");
    let out = ctl.ok(&["rotate", "shop/session"], b"");
    assert!(out.contains("(the whole value)"), "{out}");
}
