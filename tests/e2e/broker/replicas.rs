//! Two brokers on one OpenBao behave as one: a write through one reaches
//! watchers on the other at once (not at its next metadata poll), and
//! `status` on either replica lists the pods of both.

use std::time::{Duration, Instant};

use coffer_tests::{
    BrokerProcess, Ctl, Key, SidecarOptions, SidecarProcess, eventually, free_port, mint,
    openbao::OpenBao, pod_token, vault_args,
};

struct Replicas {
    a: BrokerProcess,
    b: BrokerProcess,
    _dir: tempfile::TempDir,
}

fn start(bao: &OpenBao) -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    // A poll interval far above what the test waits: only the peer's
    // notification can deliver the change in time.
    let vault = vault_args(bao, "poll: {interval: 120s}\n");
    let broker_token = dir.path().join("broker-token");
    std::fs::write(&broker_token, mint(Key::Rsa, "coffer", "broker")).unwrap();
    let (pa, pb) = (free_port(), free_port());
    let launch = |me: u16, peer: u16| {
        let mut args = vault.clone();
        args.extend([
            "--peer".into(),
            format!("http://127.0.0.1:{peer}"),
            "--peer-token-file".into(),
            broker_token.display().to_string(),
            "--peer-identity".into(),
            "coffer/broker".into(),
        ]);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        BrokerProcess::builder()
            .listen(&format!("127.0.0.1:{me}"))
            .args(&args)
            .start()
    };
    let a = launch(pa, pb);
    let b = launch(pb, pa);
    Replicas { a, b, _dir: dir }
}

fn sidecar(broker: &BrokerProcess, pod: &str) -> SidecarProcess {
    SidecarProcess::start_with(
        &broker.endpoint,
        &pod_token(pod),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions::default(),
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
    let (code, out, err) = Ctl::new(&replicas.a).run(
        &[
            "rotate",
            "shop/db",
            "--key",
            "password",
            "--wait",
            "--timeout",
            "60s",
        ],
        b"",
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
        let (_, json, _) = Ctl::new(broker).run(&["status", "shop/db", "--output", "json"], b"");
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
    let mut replicas = replicas;
    replicas.b.process.kill();
    let (_, out, _) = Ctl::new(&replicas.a).run(&["status", "shop/db"], b"");
    assert!(out.contains("(1 of 2 replicas answered)"), "{out}");
    for output in [replicas.a.process.output(), replicas.b.process.output()] {
        assert!(!output.contains(&rotated), "no value in any log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn notify_changed_is_refused_to_a_workload_that_is_not_a_peer() {
    let bao = OpenBao::start();
    bao.bao(&["kv", "put", "secret/shop/db", "password=first"]);
    let replicas = start(&bao);
    let web = replicas.a.client(mint(Key::Rsa, "shop", "web")).await;
    let error = coffer::replica::notify_changed(&web, "shop/db")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::PermissionDenied));
    let peer = replicas.a.client(mint(Key::Rsa, "coffer", "broker")).await;
    coffer::replica::notify_changed(&peer, "shop/db")
        .await
        .unwrap();
    let nobody = coffer::Client::builder(replicas.a.endpoint.clone())
        .token(coffer::TokenSource::from_static("not-a-token"))
        .connect()
        .await
        .unwrap();
    let error = coffer::replica::notify_changed(&nobody, "shop/db")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(coffer::Code::Unauthenticated));
}
