//! `--restart-on-change`: three rotations within a second restart the app
//! once, the new app holds the new value, other signals are passed on
//! without a restart, `cofferctl status` counts the env consumer as
//! applied, and SIGTERM reaches the app, whose exit code coffer-env
//! returns.

use std::time::Duration;

use coffer_tests::{BrokerProcess, Ctl, POLICY, Process, coffer_env::EnvDir, eventually};

/// Logs `start PID VALUE` to the file in argv[1] (on /dev/shm, a tmpfs),
/// `hup PID` on SIGHUP, and `term PID` on SIGTERM, then exits 7.
const APP: &str = r#"
import os, signal, sys, time
out = sys.argv[1]
def log(line):
    with open(out, "a") as f:
        f.write(line + "\n")
def term(*_):
    log("term %d" % os.getpid())
    sys.exit(7)
signal.signal(signal.SIGTERM, term)
signal.signal(signal.SIGHUP, lambda *_: log("hup %d" % os.getpid()))
log("start %d %s" % (os.getpid(), os.environ["DB_PASSWORD"]))
while True:
    time.sleep(0.05)
"#;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn starts(path: &std::path::Path) -> Vec<String> {
    lines(path)
        .into_iter()
        .filter(|l| l.starts_with("start "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_rotations_restarts_once_and_sigterm_returns_the_apps_status() {
    let broker = BrokerProcess::builder().policy(POLICY).start();
    broker.put_map("shop/db", &[("password", "rot-0")]).await;
    let dir = EnvDir::new("web-0");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let log = shm.path().join("app.log");
    let args = [
        "--restart-on-change",
        "--debounce=2s",
        "--grace-period=5s",
        "--",
        "python3",
        "-c",
        APP,
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
    assert!(starts(&log)[0].ends_with(" rot-0"), "{:?}", lines(&log));
    let first_pid = starts(&log)[0].split(' ').nth(1).unwrap().to_string();

    // Three rotations, back to back (well within the 2 s debounce).
    for value in ["rot-1", "rot-2", "rot-3"] {
        broker.put_map("shop/db", &[("password", value)]).await;
    }
    eventually(Duration::from_secs(20), "the restarted app", || {
        (starts(&log).len() == 2).then_some(())
    });
    let second = starts(&log)[1].clone();
    assert!(second.ends_with(" rot-3"), "{:?}", lines(&log));
    assert!(lines(&log).contains(&format!("term {first_pid}")));
    let second_pid = second.split(' ').nth(1).unwrap().to_string();

    // `cofferctl status` counts coffer-env's watch, applied at version 4.
    let ctl = Ctl::new(&broker);
    let status = eventually(Duration::from_secs(10), "the env consumer applied", || {
        let (code, out, _) = ctl.run(&["status", "shop/db"], b"");
        (code == 0 && out.contains("1/1 applied")).then_some(out)
    });
    assert!(status.contains("version 4"), "{status}");
    assert!(status.contains("pod=web-0"), "{status}");

    // SIGHUP is passed on and restarts nothing.
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &env.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
    eventually(Duration::from_secs(10), "the app's SIGHUP", || {
        lines(&log)
            .contains(&format!("hup {second_pid}"))
            .then_some(())
    });

    // SIGTERM reaches the app; its exit code (7) is coffer-env's.
    env.terminate();
    let status = env.wait(Duration::from_secs(20)).expect("coffer-env exits");
    assert_eq!(status.code(), Some(7), "{}", env.output());
    assert!(lines(&log).contains(&format!("term {second_pid}")));
    // Still one restart: the burst and the SIGHUP made no other.
    assert_eq!(starts(&log).len(), 2, "{:?}", lines(&log));
    let output = env.output();
    for value in ["rot-0", "rot-1", "rot-2", "rot-3"] {
        assert!(!output.contains(value), "{output}");
    }
}
