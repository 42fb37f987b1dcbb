//! The probe port (`adminListen`, which the injector opens on the pod's
//! address) under idle connections: the sidecar holds a few at once, closes
//! any that send no request within the header timeout, and keeps answering
//! the kubelet inside its memory limit while thousands of idle sockets sit
//! on the port.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, http, mint};

/// The sidecar container's memory limit in the shipped manifests.
const MEMORY_LIMIT_BYTES: u64 = 32 * 1024 * 1024;
/// The flood the outside review measured.
const IDLE_SOCKETS: usize = 6_000;

/// A sidecar with a probe port on loopback that has written its one file.
async fn probed_sidecar() -> (BrokerProcess, SidecarProcess, String) {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            global_yaml: "adminListen: 127.0.0.1:0\n",
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(30));
    let admin = sidecar.admin_addr();
    (broker, sidecar, admin)
}

/// A `/proc/PID/status` figure in bytes (`VmRSS`, `VmHWM`).
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    kib * 1024
}

/// This process's soft limit on open files (`ulimit -n`).
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_answers_within_the_memory_limit_while_thousands_of_idle_sockets_sit_on_it() {
    let _turn = coffer_tests::serial::heavy();
    let (_broker, sidecar, admin) = probed_sidecar().await;
    let pid = sidecar.process.pid();
    let addr: SocketAddr = admin.parse().unwrap();
    let (rss_before, hwm_before) = (memory(pid, "VmRSS"), memory(pid, "VmHWM"));

    // As many as this process may open, keeping room for the harness.
    let wanted = IDLE_SOCKETS.min(open_files_limit().saturating_sub(512));
    let started = Instant::now();
    let mut idle = Vec::with_capacity(wanted);
    let mut refused = 0usize;
    let mut slowest = Duration::ZERO;
    for _ in 0..wanted {
        let connecting = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(stream) => idle.push(stream),
            Err(_) => refused += 1,
        }
        slowest = slowest.max(connecting.elapsed());
    }
    let opening = started.elapsed();
    assert!(
        idle.len() >= wanted / 2,
        "only {} of {wanted} connections opened",
        idle.len()
    );
    // Let the sidecar take what the kernel queued for it.
    std::thread::sleep(Duration::from_millis(500));

    let asked = Instant::now();
    let mut attempts = 0;
    let answered = loop {
        attempts += 1;
        if let Some((200, body)) = http(&admin, "GET", "/healthz") {
            break (asked.elapsed(), body);
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "/healthz did not answer within 30 s while {} idle sockets were open",
            idle.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(answered.1, "ok\n");
    let ready = http(&admin, "GET", "/ready").map(|r| r.0);
    let (rss_after, hwm_after) = (memory(pid, "VmRSS"), memory(pid, "VmHWM"));
    eprintln!(
        "idle sockets: {} opened in {opening:.2?} (slowest {slowest:.2?}; {refused} refused or timed out); \
         sidecar RSS {:.1} MiB (peak {:.1} MiB) before, {:.1} MiB (peak {:.1} MiB) with them; \
         /healthz answered in {:.2?} after {attempts} attempt(s); /ready {ready:?}",
        idle.len(),
        mib(rss_before),
        mib(hwm_before),
        mib(rss_after),
        mib(hwm_after),
        answered.0,
    );
    assert_eq!(ready, Some(200), "the probe still reports ready");
    assert!(
        hwm_after < MEMORY_LIMIT_BYTES,
        "the sidecar's peak resident memory reached {:.1} MiB with {} idle sockets (limit 32 MiB)",
        mib(hwm_after),
        idle.len()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_no_complete_request_is_closed_by_the_sidecar() {
    let (_broker, _sidecar, admin) = probed_sidecar().await;
    let silent = TcpStream::connect(&admin).unwrap();
    let mut partial = TcpStream::connect(&admin).unwrap();
    partial.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    for (what, mut stream) in [("silent", silent), ("partial headers", partial)] {
        // Far beyond the header timeout, so a slow machine cannot fail it.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 512];
        let mut said = Vec::new();
        // Whatever it says first (a 408), the sidecar must then hang up.
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => said.extend_from_slice(&buf[..n]),
                Err(e) => break e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        };
        let said = String::from_utf8_lossy(&said);
        assert!(!said.contains(" 200 "), "{what}: answered {said}");
        assert!(
            closed,
            "{what}: the connection was still open after 30 s without a request"
        );
    }
    // And the port serves a real request as before.
    assert_eq!(http(&admin, "GET", "/healthz").map(|r| r.0), Some(200));
}
