//! Operators' writes and rotations through `cofferctl` against the real
//! broker, on the dev store and on OpenBao: map writes, generated values,
//! and rollouts followed to the last watching sidecar.

use std::time::Duration;

use coffer::SecretData;
use coffer_tests::{
    BrokerProcess, Ctl, Key, POLICY, SidecarProcess, TinyTmpfs, eventually, mint, openbao::OpenBao,
    password_of, password_sidecar, vault_broker,
};

fn text(data: &SecretData, key: &str) -> String {
    String::from_utf8(data.key(key).unwrap().expose().to_vec()).unwrap()
}

async fn admin_get(broker: &BrokerProcess, path: &str) -> coffer::Secret {
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    admin.get(path).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn put_writes_maps_from_pairs_files_and_json() {
    let broker = BrokerProcess::builder().start();
    let ctl = Ctl::new(&broker);
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "-----BEGIN CERT-----\n").unwrap();

    ctl.ok(
        &[
            "put",
            "shop/db",
            "user=app",
            "password=p=w",
            "--from-file",
            &format!("cert={}", cert.display()),
        ],
        b"",
    );
    let secret = admin_get(&broker, "shop/db").await;
    assert_eq!(text(secret.data(), "user"), "app");
    assert_eq!(
        text(secret.data(), "password"),
        "p=w",
        "only the first = splits"
    );
    assert_eq!(text(secret.data(), "cert"), "-----BEGIN CERT-----\n");

    ctl.ok(
        &["put", "shop/api", "--json"],
        br#"{"token": "t-1", "port": 8443, "tls": true}"#,
    );
    let secret = admin_get(&broker, "shop/api").await;
    assert_eq!(text(secret.data(), "token"), "t-1");
    assert_eq!(text(secret.data(), "port"), "8443");
    assert_eq!(text(secret.data(), "tls"), "true");

    // Not an object: refused, and the input is not echoed.
    let (code, out, err) = ctl.run(&["put", "shop/api", "--json"], b"[\"canary-json\"]");
    assert_ne!(code, 0);
    assert!(!format!("{out}{err}").contains("canary-json"), "{err}");
    // A pair without a key is a usage error that names no value.
    let (code, _, err) = ctl.run(&["put", "shop/api", "=canary-pair"], b"");
    assert_ne!(code, 0);
    assert!(!err.contains("canary-pair"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn put_keeps_stdin_bytes_exactly_unless_told_to_strip() {
    let broker = BrokerProcess::builder().start();
    let ctl = Ctl::new(&broker);
    // stdin is a pipe here, not a terminal: bytes are kept as they are.
    ctl.ok(&["put", "shop/raw"], b"line\n");
    assert_eq!(
        admin_get(&broker, "shop/raw").await.expose_bytes(),
        Some(&b"line\n"[..])
    );
    ctl.ok(&["put", "shop/raw", "--strip-newline"], b"line\r\n");
    assert_eq!(
        admin_get(&broker, "shop/raw").await.expose_bytes(),
        Some(&b"line"[..])
    );
}

async fn rotate_one_key(broker: &BrokerProcess) {
    let ctl = Ctl::new(broker);
    ctl.ok(&["put", "shop/db", "user=app", "password=old"], b"");
    let out = ctl.ok(
        &[
            "rotate",
            "shop/db",
            "--key",
            "password",
            "--length",
            "90",
            "--alphabet",
            "xyz",
        ],
        b"",
    );
    assert!(out.contains("rotated to version 2"), "{out}");
    let secret = admin_get(broker, "shop/db").await;
    assert_eq!(secret.version(), 2);
    let password = text(secret.data(), "password");
    // 90 of 3 characters: 142 bits, above the 128-bit floor.
    assert_eq!(password.len(), 90);
    assert!(password.chars().all(|c| "xyz".contains(c)), "{password}");
    assert_eq!(text(secret.data(), "user"), "app", "other keys are kept");

    // The spec was stored with the secret: the next rotation follows it.
    ctl.ok(&["rotate", "shop/db"], b"");
    let again = admin_get(broker, "shop/db").await;
    assert_eq!(again.version(), 3);
    let next = text(again.data(), "password");
    assert_eq!(next.len(), 90);
    assert!(next.chars().all(|c| "xyz".contains(c)));
    assert_ne!(next, password);
    assert_eq!(text(again.data(), "user"), "app");

    // A bad spec is refused with a clear message and changes nothing.
    let (code, _, err) = ctl.run(&["rotate", "shop/db", "--length", "0"], b"");
    assert_ne!(code, 0);
    assert!(err.contains("length must be between"), "{err}");
    assert_eq!(admin_get(broker, "shop/db").await.version(), 3);

    // Hex: random bytes, encoded.
    ctl.ok(
        &["rotate", "shop/key", "--encoding", "hex", "--length", "16"],
        b"",
    );
    let key = admin_get(broker, "shop/key").await;
    let key = match key.data() {
        SecretData::Bytes(b) => b.expose().to_vec(),
        SecretData::Map(m) => m.values().next().unwrap().expose().to_vec(),
    };
    assert_eq!(key.len(), 32);
    assert!(key.iter().all(u8::is_ascii_hexdigit));
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_on_the_dev_store_honours_the_spec_and_keeps_other_keys() {
    let broker = BrokerProcess::builder().start();
    rotate_one_key(&broker).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_on_openbao_honours_the_spec_and_keeps_other_keys() {
    let bao = OpenBao::start();
    let broker = vault_broker(&bao, POLICY);
    rotate_one_key(&broker).await;
    // The spec is the secret's custom_metadata in OpenBao, for every replica.
    let meta = bao.bao(&["kv", "metadata", "get", "-format=json", "secret/shop/db"]);
    assert!(meta.contains("coffer.rotate/length"), "{meta}");
    assert!(meta.contains("\"90\""), "{meta}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_wait_ends_when_every_watcher_applied_and_status_lists_them() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let pods: Vec<SidecarProcess> = ["web-a", "web-b", "web-c"]
        .iter()
        .map(|p| password_sidecar(&broker, p, None))
        .collect();
    for pod in &pods {
        eventually(Duration::from_secs(20), "the first file", || {
            (password_of(pod) == "first").then_some(())
        });
    }
    let ctl = Ctl::new(&broker);
    eventually(Duration::from_secs(20), "three watchers at v1", || {
        let (code, out, _) = ctl.run(&["status", "shop/db"], b"");
        (code == 0 && out.contains("3/3 applied")).then_some(())
    });

    let out = ctl.ok(
        &[
            "rotate",
            "shop/db",
            "--key",
            "password",
            "--wait",
            "--timeout",
            "30s",
        ],
        b"",
    );
    assert!(out.contains("version 2: 3/3 applied"), "{out}");
    let rotated = password_of(&pods[0]);
    assert_eq!(rotated.len(), 32);
    for pod in &pods {
        assert_eq!(password_of(pod), rotated, "every file changed");
    }

    let json = ctl.ok(&["status", "shop/db", "--output", "json"], b"");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["currentVersion"], 2);
    assert_eq!(status["expected"], 3);
    let mut names: Vec<&str> = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|w| {
            assert_eq!(w["version"], 2);
            assert_eq!(w["state"], "applied");
            assert!(w["timeToApplyMs"].is_u64(), "{w}");
        })
        .map(|w| w["pod"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["web-a", "web-b", "web-c"]);

    // A rollback restores the old value everywhere.
    ctl.ok(&["rollback", "shop/db", "1"], b"");
    for pod in &pods {
        eventually(Duration::from_secs(20), "the rolled-back file", || {
            (password_of(pod) == "first").then_some(())
        });
    }
    // A pod that stops watching leaves the expected set.
    drop(pods);
    eventually(Duration::from_secs(20), "no watchers", || {
        let json = ctl.ok(&["status", "shop/db", "--output", "json"], b"");
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        (status["expected"] == 0).then_some(())
    });
    let output = broker.process.output();
    assert!(
        !output.contains(&rotated),
        "the generated value is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_on_a_full_tmpfs_shows_failed_and_the_wait_fails() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let tmpfs = TinyTmpfs::mount("64k");
    let good = password_sidecar(&broker, "web-ok", None);
    let mut full = password_sidecar(&broker, "web-full", Some(tmpfs.path()));
    for pod in [&good, &full] {
        eventually(Duration::from_secs(20), "the first file", || {
            (password_of(pod) == "first").then_some(())
        });
    }
    tmpfs.fill();

    let ctl = Ctl::new(&broker);
    let (code, out, err) = ctl.run(
        &[
            "rotate",
            "shop/db",
            "--key",
            "password",
            "--wait",
            "--timeout",
            "30s",
        ],
        b"",
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("1 failed"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("pod=web-full") && l.contains("failed")),
        "{out}"
    );
    assert!(err.contains("failed to apply"), "{err}");
    assert_eq!(password_of(&full), "first", "the last good file stays");
    full.process.kill();
    drop(full);
    drop(tmpfs);
}
