//! Readiness and exit: the endpoint and the probe file report ready only once
//! every secret is written; `/quitquitquit` and `--exit-when-file-exists`
//! end the sidecar cleanly so a Job's pod can finish.

use std::time::Duration;

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, http, mint};

#[tokio::test(flavor = "multi_thread")]
async fn ready_only_once_every_secret_is_written_then_quit_on_request() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    let probe_dir = tempfile::tempdir().unwrap();
    let ready_file = probe_dir.path().join("ready");
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n  - {path: shop/late#v, file: late}\n",
        SidecarOptions {
            global_yaml: &format!(
                "adminListen: 127.0.0.1:0\nquitListen: 127.0.0.1:0\nreadyFile: {}\n",
                ready_file.display()
            ),
            ..Default::default()
        },
    );
    let admin = sidecar.admin_addr();
    assert_eq!(http(&admin, "GET", "/healthz").unwrap().0, 200);
    // shop/late does not exist yet: not ready, whatever else is written.
    let (status, body) = http(&admin, "GET", "/ready").unwrap();
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    assert!(!ready_file.exists());

    broker.put_map("shop/late", &[("v", "here")]).await;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while http(&admin, "GET", "/ready").map(|r| r.0) != Some(200) {
        assert!(
            std::time::Instant::now() < until,
            "never ready:\n{}",
            sidecar.process.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&ready_file).unwrap(), "ready\n");
    assert!(sidecar.file("password").exists() && sidecar.file("late").exists());

    let quit = sidecar.quit_addr();
    assert_eq!(http(&quit, "GET", "/quitquitquit").unwrap().0, 405);
    assert_eq!(http(&admin, "GET", "/nope").unwrap().0, 404);
    assert_eq!(http(&quit, "POST", "/quitquitquit").unwrap().0, 200);
    let status = sidecar.process.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", sidecar.process.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_zero_when_the_exit_file_appears() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    let job = tempfile::tempdir().unwrap();
    let done = job.path().join("done");
    let done_arg = done.display().to_string();
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            args: &["--exit-when-file-exists", &done_arg],
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(20));
    assert!(
        sidecar.process.wait(Duration::from_millis(300)).is_none(),
        "still running"
    );
    std::fs::write(&done, "").unwrap();
    let status = sidecar.process.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", sidecar.process.output());
    assert!(sidecar.process.output().contains("exit file exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn quitquitquit_is_refused_on_the_probe_port_and_served_on_loopback() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "pw")]).await;
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            global_yaml: "adminListen: 127.0.0.1:0\nquitListen: 127.0.0.1:0\n",
            ..Default::default()
        },
    );
    let admin = sidecar.admin_addr();
    let quit = sidecar.quit_addr();
    assert_ne!(admin, quit);
    sidecar.wait_for_files(&["password"], Duration::from_secs(20));

    // Whoever reaches the probe port (the kubelet, or anyone on the pod
    // network) cannot stop the sidecar.
    assert_eq!(http(&admin, "POST", "/quitquitquit").unwrap().0, 404);
    assert!(
        sidecar.process.wait(Duration::from_millis(500)).is_none(),
        "still running:\n{}",
        sidecar.process.output()
    );
    assert_eq!(http(&admin, "GET", "/healthz").unwrap().0, 200);
    assert_eq!(http(&admin, "GET", "/ready").unwrap().0, 200);

    assert_eq!(http(&quit, "POST", "/quitquitquit").unwrap().0, 200);
    let status = sidecar.process.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0), "{}", sidecar.process.output());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quit_endpoint_off_loopback_is_a_configuration_error() {
    let broker = BrokerProcess::builder().start();
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            global_yaml: "quitListen: 0.0.0.0:0\n",
            ..Default::default()
        },
    );
    let status = sidecar.process.wait(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(64), "{}", sidecar.process.output());
}
