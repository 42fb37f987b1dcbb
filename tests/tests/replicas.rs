//! Two brokers on one OpenBao behave as one: a write through one reaches
//! watchers on the other at once (not at its next metadata poll), and
//! `status` on either replica lists the pods of both.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use coffer_broker::auth::jwt::ProjectedClaims;
use coffer_tests::{
    AUDIENCE, BrokerProcess, ISSUER, Key, SidecarOptions, SidecarProcess, binary, eventually, mint,
    mint_claims,
    openbao::{OpenBao, ROOT_TOKEN},
};

const POLICY: &str = r#"
rules:
  - name: web-reads-shop
    subjects: [{namespace: shop, serviceAccount: web}]
    paths: ["shop/*"]
    capabilities: [read, watch]
  - name: admin-manages-shop
    subjects: [{namespace: ops, serviceAccount: admin}]
    paths: ["shop/*"]
    capabilities: [read, write, rotate, rollback, list, status]
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Replicas {
    a: BrokerProcess,
    b: BrokerProcess,
    dir: tempfile::TempDir,
}

fn start(bao: &OpenBao) -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let token = bao.file("root-token", ROOT_TOKEN);
    // A poll interval far above what the test waits: only the peer's
    // notification can deliver the change in time.
    let config = bao.file(
        "vault.yaml",
        &format!(
            "auth: {{method: token, tokenFile: {}}}\nmounts: [{{prefix: shop, mount: secret}}]\npoll: {{interval: 120s}}\n",
            token.display()
        ),
    );
    let broker_token = dir.path().join("broker-token");
    std::fs::write(&broker_token, mint(Key::Rsa, "coffer", "broker")).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let launch = |me: u16, peer: u16| {
        let args: Vec<String> = vec![
            "--store=vault".into(),
            "--vault-addr".into(),
            bao.addr.clone(),
            "--vault-config".into(),
            config.display().to_string(),
            "--peer".into(),
            format!("http://127.0.0.1:{peer}"),
            "--peer-token-file".into(),
            broker_token.display().to_string(),
            "--peer-identity".into(),
            "coffer/broker".into(),
        ];
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        BrokerProcess::launch(POLICY, &format!("127.0.0.1:{me}"), &args)
    };
    let a = launch(pa, pb);
    let b = launch(pb, pa);
    Replicas { a, b, dir }
}

fn sidecar(broker: &BrokerProcess, pod: &str) -> SidecarProcess {
    let token = mint_claims(
        Key::Rsa,
        &ProjectedClaims::projected(
            ISSUER,
            AUDIENCE,
            "shop",
            "web",
            Some(pod),
            Duration::from_secs(3600),
        ),
    );
    SidecarProcess::start_with(
        &broker.endpoint,
        &token,
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions::default(),
    )
}

fn ctl(replicas: &Replicas, broker: &BrokerProcess, args: &[&str]) -> (i32, String, String) {
    let token = replicas.dir.path().join("admin-token");
    std::fs::write(&token, mint(Key::Rsa, "ops", "admin")).unwrap();
    let out = Command::new(binary("cofferctl"))
        .arg("--broker")
        .arg(&broker.endpoint)
        .arg("--token-file")
        .arg(&token)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read(sidecar: &SidecarProcess) -> String {
    std::fs::read_to_string(sidecar.file("password")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_through_one_replica_reaches_watchers_on_the_other_at_once() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=first"]);
    let replicas = start(&bao);
    let on_a = sidecar(&replicas.a, "web-a");
    let on_b = sidecar(&replicas.b, "web-b");
    for pod in [&on_a, &on_b] {
        eventually(Duration::from_secs(20), "the first file", || {
            (read(pod) == "first").then_some(())
        });
    }

    let started = Instant::now();
    let (code, out, err) = ctl(
        &replicas,
        &replicas.a,
        &[
            "rotate",
            "shop/db",
            "--key",
            "password",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2/2 applied"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "well under B's 120 s poll interval"
    );
    let rotated = read(&on_a);
    assert_eq!(rotated.len(), 32);
    assert_eq!(read(&on_b), rotated, "the watcher on B has the new value");

    // Either replica answers for both.
    for broker in [&replicas.a, &replicas.b] {
        let (_, json, _) = ctl(
            &replicas,
            broker,
            &["status", "shop/db", "--output", "json"],
        );
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(status["replicas"], 2);
        assert_eq!(status["replicasAnswered"], 2);
        let mut pods: Vec<&str> = status["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pod"].as_str().unwrap())
            .collect();
        pods.sort();
        assert_eq!(pods, ["web-a", "web-b"], "{json}");
    }

    // A replica that is down is reported, not hidden.
    let Replicas { a, mut b, dir } = replicas;
    b.process.kill();
    let replicas_left = Replicas { a, b, dir };
    let (_, out, _) = ctl(&replicas_left, &replicas_left.a, &["status", "shop/db"]);
    assert!(out.contains("(1 of 2 replicas answered)"), "{out}");
    for output in [
        replicas_left.a.process.output(),
        replicas_left.b.process.output(),
    ] {
        assert!(!output.contains(&rotated), "no value in any log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_changed_is_refused_to_a_workload_that_is_not_a_peer() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=first"]);
    let replicas = start(&bao);
    let web = replicas.a.client(mint(Key::Rsa, "shop", "web")).await;
    let error = web.notify_changed("shop/db").await.unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::PermissionDenied));
    let peer = replicas.a.client(mint(Key::Rsa, "coffer", "broker")).await;
    peer.notify_changed("shop/db").await.unwrap();
    let nobody = coffer::Client::builder(replicas.a.endpoint.clone())
        .token(coffer::TokenSource::from_static("not-a-token"))
        .connect()
        .await
        .unwrap();
    let error = nobody.notify_changed("shop/db").await.unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::Unauthenticated));
}
