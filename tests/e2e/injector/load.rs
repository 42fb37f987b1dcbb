//! The real `coffer-injector` under hostile load, as issue #22 found it:
//! its `failurePolicy: Fail` makes its outage the outage of every opted-in
//! pod, so no caller may take its memory or its connections. Bodies over
//! the limit are refused before they are read, a body at the limit costs
//! little more than its size, sockets that never finish a TLS handshake or
//! never send a request are closed within seconds and never lock out the
//! API server, a request is timed on its own and a busy keep-alive
//! connection is never cut; and all of it at once: `/healthz` keeps
//! answering and the peak resident memory stays under the Deployment's
//! limit (64Mi).

use crate::injector::common as injector_common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use injector_common::{
    Connection, Injector, client_config, opted_in, review, short, tcp_closed_within,
};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
/// The injector's memory limit (deploy/base/injector/injector.yaml).
const LIMIT_KIB: u64 = 64 * 1024;

/// A CREATE review of an opted-in pod, `size` bytes long: the bulk is the
/// app container's `args`, a list of one-character strings (the cheapest
/// JSON for a parser that builds a document tree to hold).
fn review_of_size(size: usize) -> Vec<u8> {
    let mut pod = opted_in();
    pod["spec"]["containers"][0]["args"] = serde_json::json!(["ARGS"]);
    let text = review("CREATE", "shop", Some(&pod), None, None).to_string();
    let (head, tail) = text.split_once("\"ARGS\"").unwrap();
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(b"\"0\"");
    while body.len() + 4 + tail.len() <= size {
        body.extend_from_slice(b",\"0\"");
    }
    while body.len() + tail.len() < size {
        body.push(b' ');
    }
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), size);
    body
}

/// A CREATE review `size` bytes long whose app container declares as many
/// ports as fit: a list the injector reads (to find a free probe port).
fn review_with_ports(size: usize) -> Vec<u8> {
    let mut pod = opted_in();
    pod["spec"]["containers"][0]["ports"] = serde_json::json!(["PORTS"]);
    let text = review("CREATE", "shop", Some(&pod), None, None).to_string();
    let (head, tail) = text.split_once("\"PORTS\"").unwrap();
    let port = br#"{"containerPort":1}"#;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(port);
    while body.len() + 1 + port.len() + tail.len() <= size {
        body.push(b',');
        body.extend_from_slice(port);
    }
    while body.len() + tail.len() < size {
        body.push(b' ');
    }
    body.extend_from_slice(tail.as_bytes());
    body
}

/// POSTs `body` to `/mutate` on a fresh connection without waiting to be
/// asked for it (as a hostile client does); the status, or `None` when the
/// server closed the connection before answering.
fn post_blindly(injector: &Injector, body: &[u8]) -> Option<u16> {
    let connection =
        rustls::ClientConnection::new(client_config(&injector.ca), "localhost".try_into().unwrap())
            .unwrap();
    let tcp = TcpStream::connect(&injector.addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    // A server that refuses early may close while the body is still being
    // sent: that is an answer too.
    let _ = stream.write_all(body).and_then(|()| stream.flush());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `GET /healthz` on a fresh connection, as the kubelet probes (connect,
/// TLS handshake, request): the time to the answer, or `None` when there
/// was none within 5 s.
fn health(injector: &Injector) -> Option<Duration> {
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let (addr, ca) = (injector.addr.clone(), injector.ca.clone());
    std::thread::spawn(move || {
        let answer = std::panic::catch_unwind(|| {
            Connection::open(&addr, &ca).request("GET", "/healthz", b"")
        });
        let _ = tx.send(answer);
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(Ok((200, _)))) => Some(start.elapsed()),
        _ => None,
    }
}

/// `count` TCP connections to the injector that never send a byte.
fn idle_sockets(injector: &Injector, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| TcpStream::connect(&injector.addr).unwrap())
        .collect()
}

fn kib_as_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[test]
fn a_declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let injector = Injector::start();
    let mut connection = injector.connect();
    // `Expect: 100-continue`: the body follows only if the server asks.
    let start = Instant::now();
    let (status, _) = connection
        .request_head(
            "POST",
            "/mutate",
            &format!("Content-Length: {}\r\nExpect: 100-continue\r\n", 4 * MIB),
        )
        .expect("an answer without the body");
    assert_eq!(status, 413);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_4_mib_body_is_refused_and_costs_no_memory() {
    let _turn = coffer_tests::serial::heavy();
    let injector = Injector::start();
    let before = injector.memory_kib("VmHWM");
    let status = post_blindly(&injector, &review_of_size(4 * MIB));
    let peak = injector.memory_kib("VmHWM");
    eprintln!(
        "4 MiB body: answer {status:?}, peak RSS {} (idle {})",
        kib_as_mib(peak),
        kib_as_mib(before)
    );
    assert!(matches!(status, Some(413) | None), "{status:?}");
    assert!(
        peak < before + 8 * 1024,
        "a refused 4 MiB body raised the peak RSS from {} to {}",
        kib_as_mib(before),
        kib_as_mib(peak)
    );
}

#[test]
fn a_review_just_under_the_limit_is_answered_for_little_more_than_its_size() {
    let _turn = coffer_tests::serial::heavy();
    let injector = Injector::start();
    let before = injector.memory_kib("VmHWM");
    let body = review_of_size(3 * MIB - 64 * 1024);
    let status = post_blindly(&injector, &body);
    assert_eq!(status, Some(200));
    let peak = injector.memory_kib("VmHWM");
    eprintln!(
        "{} KiB review: peak RSS {} (idle {})",
        body.len() / 1024,
        kib_as_mib(peak),
        kib_as_mib(before)
    );
    // The body itself, once; not a document tree many times its size.
    assert!(
        peak < before + 12 * 1024,
        "a {} KiB review raised the peak RSS from {} to {}",
        body.len() / 1024,
        kib_as_mib(before),
        kib_as_mib(peak)
    );
}

#[test]
fn a_review_listing_too_many_ports_is_refused_without_holding_them() {
    let injector = Injector::start();
    let before = injector.memory_kib("VmHWM");
    let body = review_with_ports(3 * MIB - 64 * 1024);
    let (status, answer) = injector
        .request("POST", "/mutate", &body)
        .expect("an answer");
    let answer: Value = serde_json::from_str(&answer).unwrap_or_default();
    assert_eq!(status, 200, "{}", short(&answer));
    assert_eq!(answer["response"]["allowed"], false, "{}", short(&answer));
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("ports"), "{message}");
    let peak = injector.memory_kib("VmHWM");
    assert!(
        peak < before + 12 * 1024,
        "peak RSS from {} to {}",
        kib_as_mib(before),
        kib_as_mib(peak)
    );
}

#[test]
fn idle_sockets_do_not_lock_out_health_or_reviews() {
    let _turn = coffer_tests::serial::heavy();
    let injector = Injector::start();
    let _sockets = idle_sockets(&injector, 500);
    let latency = health(&injector).expect("/healthz answers within 5 s beside 500 idle sockets");
    eprintln!("/healthz beside 500 idle sockets: {latency:?}");
    let start = Instant::now();
    let response = injector.create(&opted_in());
    assert_eq!(response["patchType"], "JSONPatch");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_socket_that_never_starts_a_handshake_is_closed_within_seconds() {
    let injector = Injector::start();
    let mut socket = TcpStream::connect(&injector.addr).unwrap();
    let closed = tcp_closed_within(&mut socket, Duration::from_secs(15));
    eprintln!("a silent socket was closed after {closed:?}");
    assert!(closed.is_some(), "still open after 15 s");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_within_seconds() {
    let injector = Injector::start();
    let mut connection = injector.connect();
    assert_eq!(connection.request("GET", "/healthz", b"").unwrap().0, 200);
    let closed = connection.closed_within(Duration::from_secs(25));
    eprintln!("an idle keep-alive connection was closed after {closed:?}");
    assert!(closed.is_some(), "still open after 25 s");
}

#[test]
fn a_keep_alive_connection_in_use_is_not_cut() {
    // The API server keeps its connections to a webhook open; a deadline
    // on the whole connection would cut one in the middle of a review.
    let injector = Injector::start();
    let mut connection = injector.connect();
    let start = Instant::now();
    let review = review("CREATE", "shop", Some(&opted_in()), None, None).to_string();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(36) {
        let (status, body) = connection
            .request("POST", "/mutate", review.as_bytes())
            .unwrap_or_else(|e| {
                panic!("cut after {:?} and {served} reviews: {e}", start.elapsed())
            });
        assert_eq!(status, 200, "{body}");
        served += 1;
        std::thread::sleep(Duration::from_secs(3));
    }
}

#[test]
fn a_request_whose_body_stalls_is_timed_out_on_its_own() {
    let injector = Injector::start();
    let mut connection = injector.connect();
    let start = Instant::now();
    let (status, _) = connection
        .request_head("POST", "/mutate", "Content-Length: 1000\r\n")
        .expect("an answer to the stalled request");
    let elapsed = start.elapsed();
    eprintln!("a stalled body was answered {status} after {elapsed:?}");
    assert_eq!(status, 408);
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
}

/// Issue #22's scenario end to end: 500 idle sockets (renewed as the
/// injector closes them), 8 concurrent 4 MiB bodies and 8 concurrent
/// bodies just under the limit, in rounds; `/healthz` polled throughout.
#[test]
fn health_answers_and_memory_stays_under_the_limit_under_idle_sockets_and_large_bodies() {
    let _turn = coffer_tests::serial::heavy();
    let injector = Arc::new(Injector::start());
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = injector.memory_kib("VmRSS");
    let idle_hwm = injector.memory_kib("VmHWM");
    let mut quiet = Vec::new();
    for _ in 0..20 {
        quiet.push(health(&injector).expect("/healthz answers when idle"));
    }
    quiet.sort();

    let done = Arc::new(AtomicBool::new(false));
    let sockets = {
        let (injector, done) = (injector.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let open = idle_sockets(&injector, 500);
                std::thread::sleep(Duration::from_secs(3));
                drop(open);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let over = Arc::new(review_of_size(4 * MIB));
    let under = Arc::new(review_of_size(3 * MIB - 64 * 1024));
    let ports = Arc::new(review_with_ports(3 * MIB - 64 * 1024));
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let injector = injector.clone();
            let body = match i % 4 {
                0 | 1 => over.clone(),
                2 => under.clone(),
                _ => ports.clone(),
            };
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| post_blindly(&injector, &body))
                    .collect::<Vec<_>>()
            })
        })
        .collect();

    let mut latencies = Vec::new();
    let start = Instant::now();
    while latencies.len() < 20 || senders.iter().any(|s| !s.is_finished()) {
        let latency = health(&injector).unwrap_or_else(|| {
            panic!(
                "/healthz gave no answer within 5 s after {:?} of load",
                start.elapsed()
            )
        });
        latencies.push(latency);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the load never ended"
        );
    }
    let answers: Vec<Option<u16>> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    sockets.join().unwrap();
    let load_time = start.elapsed();
    let peak = injector.memory_kib("VmHWM");
    latencies.sort();
    let at = |list: &[Duration], q: f64| list[((list.len() - 1) as f64 * q).round() as usize];
    let answered_under = answers.iter().filter(|a| **a == Some(200)).count();
    eprintln!(
        "injector under 500 idle sockets, 8 x 4 MiB and 8 x {} KiB bodies (4 rounds, {load_time:.1?}):\n\
         \x20 /healthz: {} polls, p50 {:?}, p90 {:?}, max {:?} (idle: p50 {:?}, max {:?})\n\
         \x20 peak RSS (VmHWM) {} against the 64 MiB limit; idle RSS {} (idle VmHWM {})\n\
         \x20 answers: {} of {} reviews at 200 ({:?})",
        under.len() / 1024,
        latencies.len(),
        at(&latencies, 0.5),
        at(&latencies, 0.9),
        latencies[latencies.len() - 1],
        at(&quiet, 0.5),
        quiet[quiet.len() - 1],
        kib_as_mib(peak),
        kib_as_mib(idle_rss),
        kib_as_mib(idle_hwm),
        answered_under,
        answers.len(),
        answers,
    );
    assert!(
        peak < LIMIT_KIB,
        "peak RSS {} over the 64 MiB limit",
        kib_as_mib(peak)
    );
    // Reviews under the limit were served, not dropped.
    assert!(answered_under >= 4, "{answers:?}");
    let mut injector = Arc::into_inner(injector).unwrap();
    assert!(injector.is_running(), "{}", injector.output());
}
