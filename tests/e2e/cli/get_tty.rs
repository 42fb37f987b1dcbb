//! `cofferctl get` refuses to write control characters or non-UTF-8 bytes to
//! a terminal (escape injection) unless `--raw`; pipes get the exact bytes.
//! The terminal is a real pty, made by util-linux `script`.

use std::process::Command;

use coffer_tests::{BrokerProcess, Key, binary, mint};

/// Runs `cofferctl args...` on a pty; returns its exit code and what the
/// terminal showed.
fn on_a_tty(args: &[String]) -> (i32, String) {
    let mut line = binary("cofferctl").display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn get_refuses_escape_sequences_on_a_terminal_unless_raw() {
    let broker = BrokerProcess::builder().start();
    let hostile = b"before\x1b]0;owned\x07\x1b[2Jafter";
    broker.put_bytes("shop/escape", hostile).await;
    broker.put_bytes("shop/plain", b"just text\n").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, mint(Key::Rsa, "ops", "admin")).unwrap();
    let token = token.display().to_string();
    let common = ["--broker", &broker.endpoint, "--token-file", &token];
    let with = |head: &[&str]| -> Vec<String> {
        head.iter().chain(&common).map(|s| s.to_string()).collect()
    };

    let (code, shown) = on_a_tty(&with(&["get", "shop/escape"]));
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("refusing"), "{shown}");
    assert!(
        !shown.contains('\u{1b}') && !shown.contains("owned"),
        "{shown:?}"
    );

    // Printable text still prints on a terminal.
    let (code, shown) = on_a_tty(&with(&["get", "shop/plain"]));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("just text"), "{shown}");

    // --raw is the explicit way through.
    let (code, shown) = on_a_tty(&with(&["get", "shop/escape", "--raw"]));
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("owned"), "{shown:?}");

    // A pipe is not a terminal: the exact bytes, no flag needed.
    let out = Command::new(binary("cofferctl"))
        .args(with(&["get", "shop/escape"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, hostile);
}
