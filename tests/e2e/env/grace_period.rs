//! `--restart-on-change` with an app that ignores SIGTERM: after the grace
//! period the old app is killed (SIGKILL) and the new one starts with the
//! new value; the kill is logged, no value is; and when the new app is
//! killed from outside, coffer-env exits 137 (128 + SIGKILL).

use std::time::Duration;

use coffer_tests::{BrokerProcess, POLICY, Process, coffer_env::EnvDir, eventually};

/// Ignores SIGTERM; logs `start PID VALUE` to argv[1] (on /dev/shm).
const STUBBORN: &str = r#"
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "a") as f:
    f.write("start %d %s\n" % (os.getpid(), os.environ["DB_PASSWORD"]))
while True:
    time.sleep(0.05)
"#;

fn starts(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("start "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_ignoring_sigterm_is_killed_after_the_grace_period_and_restarted() {
    let broker = BrokerProcess::builder().policy(POLICY).start();
    broker.put_map("shop/db", &[("password", "grace-0")]).await;
    let dir = EnvDir::new("web-0");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let log = shm.path().join("app.log");
    let args = [
        "--restart-on-change",
        "--debounce=200ms",
        "--grace-period=1s",
        "--",
        "python3",
        "-c",
        STUBBORN,
        log.to_str().unwrap(),
    ];
    let command = dir.against(
        &broker,
        &[("DB_PASSWORD", "coffer:shop/db#password")],
        &args,
    );
    let mut env = Process::spawn(command, dir.path("coffer-env.log"));
    eventually(Duration::from_secs(20), "the first app", || {
        (starts(&log).len() == 1).then_some(())
    });
    let first_pid: i32 = starts(&log)[0].split(' ').nth(1).unwrap().parse().unwrap();

    broker.put_map("shop/db", &[("password", "grace-1")]).await;
    eventually(Duration::from_secs(20), "the restarted app", || {
        (starts(&log).len() == 2).then_some(())
    });
    assert!(starts(&log)[1].ends_with(" grace-1"), "{:?}", starts(&log));
    // The old app is gone (SIGKILL), not left beside the new one.
    assert!(!std::path::Path::new(&format!("/proc/{first_pid}")).exists());
    let output = env.output();
    assert!(
        output.contains("did not exit after SIGTERM; SIGKILL"),
        "{output}"
    );
    assert!(
        !output.contains("grace-0") && !output.contains("grace-1"),
        "{output}"
    );
    // The new app killed from outside: coffer-env exits as a shell would.
    let second_pid = starts(&log)[1].split(' ').nth(1).unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &second_pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = env.wait(Duration::from_secs(20)).expect("coffer-env exits");
    assert_eq!(status.code(), Some(137), "{}", env.output());
}
