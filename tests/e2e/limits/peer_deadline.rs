//! A peer that accepts TCP and never answers costs `status` and
//! `rotate --wait` the documented 3 s at most: one deadline for the whole
//! fan-out to the peers, not 3 s per try of each.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use coffer_tests::{BrokerProcess, Ctl, Key, mint};

/// The whole wait on peers, as documented.
const PEER_DEADLINE: Duration = Duration::from_secs(3);

/// Generous: this bounds a function, it is not a benchmark.
const SLACK: Duration = Duration::from_secs(5);

/// A loopback address that accepts connections and never says a word.
fn silent_peer() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_rotate_wait_with_a_silent_peer_take_one_peer_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let broker_token = dir.path().join("broker-token");
    std::fs::write(&broker_token, mint(Key::Rsa, "coffer", "broker")).unwrap();
    let peer = silent_peer();
    let broker = BrokerProcess::builder()
        .args([
            "--peer",
            &peer,
            "--peer-token-file",
            broker_token.to_str().unwrap(),
            "--peer-identity",
            "coffer/broker",
        ])
        .start();
    broker.put_bytes("shop/db", b"v1").await;
    let ctl = Ctl::new(&broker);

    let started = Instant::now();
    let (code, out, err) = ctl.run(&["status", "shop/db"], b"");
    let took = started.elapsed();
    eprintln!("status with a silent peer took {took:?}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(1 of 2 replicas answered)"), "{out}");
    assert!(took < PEER_DEADLINE + SLACK, "status took {took:?}");

    let started = Instant::now();
    let (code, out, err) = ctl.run(&["rotate", "shop/db", "--wait", "--timeout", "60s"], b"");
    let took = started.elapsed();
    eprintln!("rotate --wait with a silent peer took {took:?}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(took < PEER_DEADLINE + SLACK, "rotate --wait took {took:?}");
}
