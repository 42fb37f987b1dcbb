//! Telling the app: an action fires exactly once per real change, never for
//! unchanged content, and a failing action is retried without holding up
//! anything else.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use coffer_tests::{
    BrokerProcess, HupCounter, Key, SidecarOptions, SidecarProcess, eventually, mint,
};

fn token() -> String {
    mint(Key::Ec, "shop", "web")
}

fn read(sidecar: &SidecarProcess, name: &str) -> Option<String> {
    std::fs::read_to_string(sidecar.file(name)).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_fires_exactly_once_per_real_change_and_never_for_unchanged_content() {
    let broker = BrokerProcess::builder().start();
    let app = HupCounter::start();
    broker.put_map("shop/db", &[("password", "v0")]).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        &format!(
            "  - path: shop/db#password\n    file: password\n    action: {{signal: HUP, pidFile: {}}}\n",
            app.pid_file.display()
        ),
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(20));

    for n in 1..=5usize {
        broker
            .put_map("shop/db", &[("password", &format!("v{n}"))])
            .await;
        eventually(Duration::from_secs(20), "the rotated file", || {
            (read(&sidecar, "password")? == format!("v{n}")).then_some(())
        });
        eventually(Duration::from_secs(20), "the SIGHUP", || {
            (app.count() >= n).then_some(())
        });
        assert_eq!(app.count(), n, "one SIGHUP per change");
    }

    // The same content again, twice: new versions, but nothing to write.
    let data_before = sidecar.data_target().unwrap();
    let mut last = 0;
    for _ in 0..2 {
        last = broker.put_map("shop/db", &[("password", "v5")]).await;
    }
    // The sidecar acknowledges a version once it has handled it.
    eventually(Duration::from_secs(20), "the acknowledgement", || {
        let acked = futures_block(broker.acked_versions("shop/db"));
        acked.contains(&last).then_some(())
    });
    assert_eq!(sidecar.data_target().unwrap(), data_before, "no write");
    let output = sidecar.process.output();
    assert!(
        output.contains("content unchanged; nothing written"),
        "{output}"
    );

    // One more real change: had the unchanged puts fired, this would be 7.
    broker.put_map("shop/db", &[("password", "v6")]).await;
    eventually(Duration::from_secs(20), "the last SIGHUP", || {
        (app.count() >= 6).then_some(())
    });
    assert_eq!(app.count(), 6);
    // The first write told no one: the app reads its files when it starts.
    assert_eq!(output.matches("action done").count(), 5, "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_command_runs_once_per_update_with_the_changed_files() {
    let broker = BrokerProcess::builder().start();
    broker
        .put_map("shop/db", &[("user", "u0"), ("password", "p0")])
        .await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        "  - {path: shop/db#user, file: user}\n  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            global_yaml: &format!(
                "action:\n  command: [sh, -c, 'echo \"$COFFER_CHANGED_FILES\" | paste -sd, >> {}']\n",
                log.path().display()
            ),
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["user", "password"], Duration::from_secs(20));
    let lines = || {
        std::fs::read_to_string(log.path())
            .unwrap()
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };

    broker
        .put_map("shop/db", &[("user", "u1"), ("password", "p1")])
        .await;
    eventually(Duration::from_secs(20), "the first run", || {
        (!lines().is_empty()).then_some(())
    });
    broker
        .put_map("shop/db", &[("user", "u1"), ("password", "p2")])
        .await;
    eventually(Duration::from_secs(20), "the second run", || {
        (lines().len() >= 2).then_some(())
    });
    assert_eq!(lines(), vec!["password,user", "password"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_action_is_retried_and_blocks_nothing_else() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/a", &[("v", "a0")]).await;
    broker.put_map("shop/b", &[("v", "b0")]).await;
    let healthy = HupCounter::start();
    let late = HupCounter::start();
    let missing_pid = tempfile::tempdir().unwrap();
    let late_pid_file = missing_pid.path().join("late.pid");
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        &format!(
            "  - path: shop/a#v\n    file: a\n    action: {{signal: HUP, pidFile: {}}}\n  - path: shop/b#v\n    file: b\n    action: {{signal: HUP, pidFile: {}}}\n",
            late_pid_file.display(),
            healthy.pid_file.display()
        ),
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["a", "b"], Duration::from_secs(20));

    // a's app has no pid file yet: its action fails and is retried.
    broker.put_map("shop/a", &[("v", "a1")]).await;
    sidecar.wait_for_log("action failed; retrying", Duration::from_secs(20));
    // Meanwhile b rotates, and b's app hears about it.
    broker.put_map("shop/b", &[("v", "b1")]).await;
    eventually(Duration::from_secs(20), "b's SIGHUP", || {
        (healthy.count() == 1).then_some(())
    });
    assert_eq!(read(&sidecar, "b").as_deref(), Some("b1"));

    // a's app appears; the retry reaches it, exactly once.
    std::fs::copy(&late.pid_file, &late_pid_file).unwrap();
    eventually(Duration::from_secs(30), "a's SIGHUP after retrying", || {
        (late.count() >= 1).then_some(())
    });
    assert_eq!(late.count(), 1);
    assert_eq!(healthy.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_action_reaches_the_app_once_per_change() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "p0")]).await;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request_line = head.lines().next().unwrap_or_default().to_string();
                requests
                    .lock()
                    .unwrap()
                    .push(format!("{request_line} {}", String::from_utf8_lossy(&body)));
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
    }
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        &format!(
            "  - path: shop/db#password\n    file: password\n    action: {{post: \"http://{addr}/-/reload?from=coffer\"}}\n"
        ),
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(20));
    broker.put_map("shop/db", &[("password", "p1")]).await;
    eventually(Duration::from_secs(20), "the POST", || {
        (!requests.lock().unwrap().is_empty()).then_some(())
    });
    broker.put_map("shop/db", &[("password", "p2")]).await;
    eventually(Duration::from_secs(20), "the second POST", || {
        (requests.lock().unwrap().len() >= 2).then_some(())
    });
    let requests = requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec!["POST /-/reload?from=coffer HTTP/1.1 {\"files\":[\"password\"]}".to_string(); 2]
    );
}

/// Runs a future to completion from inside a polling closure.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
