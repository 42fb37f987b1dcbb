//! `--once`, for init containers: exit 0 with every file written, non-zero
//! fast on what retrying cannot fix, non-zero after the bounded retry time on
//! what it might, and 64 (EX_USAGE) on a bad configuration.

use std::time::Duration;

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, mint};

fn once(broker: &BrokerProcess, token: &str, secrets: &str, extra: &[&str]) -> SidecarProcess {
    let mut args = vec!["--once"];
    args.extend_from_slice(extra);
    SidecarProcess::start_with(
        &broker.endpoint,
        token,
        secrets,
        SidecarOptions {
            args: &args,
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn once_writes_everything_and_exits_zero() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    broker.put_map("shop/api", &[("key", "k")]).await;
    let mut sidecar = once(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n  - {path: shop/api, file: api.env, format: dotenv}\n",
        &[],
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", sidecar.process.output());
    assert_eq!(
        std::fs::read_to_string(sidecar.file("password")).unwrap(),
        "pw"
    );
    assert_eq!(
        std::fs::read_to_string(sidecar.file("api.env")).unwrap(),
        "key=\"k\"\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_fails_fast_when_access_is_denied() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    // A workload the policy does not know: retrying will not help.
    let mut sidecar = once(
        &broker,
        &mint(Key::Ec, "shop", "intruder"),
        "  - {path: shop/db#password, file: password}\n",
        &["--once-timeout", "60"],
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(1));
    let output = sidecar.process.output();
    assert!(output.contains("sidecar failed"), "{output}");
    assert!(
        !output.contains("retrying"),
        "a permanent error is not retried:\n{output}"
    );
    assert!(!sidecar.file("password").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn once_gives_up_after_the_retry_time_when_a_secret_is_missing() {
    let broker = BrokerProcess::builder().start();
    let mut sidecar = once(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/not-yet, file: later}\n",
        &["--once-timeout", "2"],
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(1));
    let output = sidecar.process.output();
    assert!(output.contains("gave up after"), "{output}");
    assert!(
        output.contains("fetch failed; retrying"),
        "it did retry:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_exits_64_on_a_bad_configuration() {
    let broker = BrokerProcess::builder().start();
    let mut sidecar = once(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db, file: ../escape}\n",
        &[],
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(status.code(), Some(64));
    assert!(sidecar.process.output().contains("invalid configuration"));
}

#[tokio::test(flavor = "multi_thread")]
async fn once_timeout_bounds_an_attempt_against_a_broker_that_never_answers() {
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept() {
            open.push(stream);
            if open.len() > 16 {
                break;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut sidecar = SidecarProcess::start_with(
        &endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            args: &["--once", "--once-timeout", "2"],
            ..Default::default()
        },
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    let took = started.elapsed();
    let output = sidecar.process.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{output}");
    assert!(output.contains("gave up after"), "{output}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn once_fails_at_once_when_chown_is_not_permitted() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    let started = std::time::Instant::now();
    // Root without CAP_CHOWN: giving the file to uid 4321 is EPERM.
    let mut sidecar = SidecarProcess::start_wrapped(
        &[
            "setpriv",
            "--bounding-set",
            "-chown",
            "--inh-caps",
            "-chown",
            "--",
        ],
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password, uid: 4321}\n",
        SidecarOptions {
            args: &["--once", "--once-timeout", "60"],
            ..Default::default()
        },
    );
    let status = sidecar.process.wait(Duration::from_secs(30)).unwrap();
    let output = sidecar.process.output();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not at once:\n{output}"
    );
    assert!(output.contains("chown"), "{output}");
    assert!(!output.contains("retrying"), "not retried:\n{output}");
    assert!(!sidecar.file("password").exists());
}
