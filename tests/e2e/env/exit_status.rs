//! Under `--restart-on-change`, coffer-env exits as the app did: its exit
//! code, or 128 + the signal that killed it, as a shell reports it; and an
//! app that cannot be found is 127. No reference: no broker is needed.

use std::time::Duration;

use coffer_tests::{Process, coffer_env::EnvDir};

fn status_of(dir: &EnvDir, app: &[&str]) -> Option<i32> {
    let mut args = vec!["--restart-on-change", "--"];
    args.extend(app);
    let command = dir.command("http://127.0.0.1:1", &[("PLAIN", "x")], &args);
    let mut process = Process::spawn(command, dir.path("coffer-env.log"));
    let status = process
        .wait(Duration::from_secs(20))
        .expect("coffer-env exits");
    status.code()
}

#[test]
fn the_apps_code_or_128_plus_its_signal_is_the_exit_status() {
    let dir = EnvDir::new("web-0");
    assert_eq!(
        status_of(&dir, &["python3", "-c", "raise SystemExit(3)"]),
        Some(3)
    );
    let killed = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)";
    assert_eq!(status_of(&dir, &["python3", "-c", killed]), Some(137));
    assert_eq!(status_of(&dir, &["no-such-app"]), Some(127));
}
