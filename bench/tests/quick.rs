//! `coffer-bench --quick` runs every mode and prints its table. Timings are
//! never asserted: only that each mode produced its rows against both servers,
//! and that the server process (`--serve`) speaks its line protocol. The
//! shipped rows start `coffer-broker` from beside the bench binary:
//! `scripts/test` builds every binary before the tests
//! (`cargo build -p coffer-broker -p coffer-sidecar` when running this test
//! alone).

use std::process::Command;

#[test]
fn quick_run_prints_the_table_of_every_mode() {
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-bench"))
        .arg("--quick")
        .output()
        .unwrap_or_else(|e| panic!("running coffer-bench: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "coffer-bench --quick failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("| workload | coffer | bare tonic | ratio |"),
        "{stdout}"
    );
    for row in [
        "| GetSecret 1 x 4, shipped rs256, RS256 ",
        "| GetSecret 1 x 4, shipped es256, ES256 ",
        "| GetSecret 1 x 4, shipped tls, RS256 ",
        ", TLS: server CPU/req |",
        "| GetSecret 1 x 4, shipped audit, RS256 ",
        ", audit on: server CPU/req |",
        "| GetSecret 1 x 4, in process: req/s |",
        "| GetSecret 1 x 4, in process: server CPU/req |",
        "| cold tokens: shipped, RS256 ",
        "| cold token 1 x 16: req/s |",
        "vs ring RS256 verify/s",
        "| broker token verifier vs ring RS256 verify, same fresh tokens, interleaved (per CPU-s) |",
        "| cold token: verification in the request (CPU/req a fresh token adds on the broker,",
        "| rotation to 50 over 5: last receiver |",
        "| policy decision, 100 rules (one namespace, each rule its own top folder) |",
        "| policy reload (parse and index), 100 rules",
        "| verification cache hit, 100 identities cached |",
        "| memory per cached verification, 100 identities",
        "| watched paths 300: server CPU per update of one path |",
        "| watched paths 300: broker RSS per watched path",
        "| sidecar with 10 secrets: start to every file written |",
        "| sidecar with 10 secrets: RSS when ready |",
        "| bao agent (caching API proxy) in front of OpenBao: server-side CPU per read |",
        "| OpenBao direct (KV v2): reads/s |",
        "server RSS per stream",
    ] {
        assert!(stdout.contains(row), "missing {row:?} in\n{stdout}");
    }
}

/// The server process (`--serve`) announces its servers, answers the
/// parent's commands one line each, reports a bad command as an error, and
/// exits when its stdin closes (as when the parent bench ends, however it
/// ends).
#[test]
fn serve_mode_answers_commands_and_exits_when_its_stdin_closes() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_coffer-bench"))
        .args(["--serve", "--server-threads", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("running coffer-bench --serve: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut read_line = move || {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading a line");
        line.trim_end().to_string()
    };
    let ready = read_line();
    assert!(
        ready.starts_with("ready broker=http://127.0.0.1:"),
        "{ready}"
    );
    for field in [" bare=http://127.0.0.1:", " reply_bytes=", " token="] {
        assert!(ready.contains(field), "missing {field:?} in {ready}");
    }
    let mut ask = move |command: &str| {
        writeln!(stdin, "{command}").expect("writing a command");
        read_line()
    };
    let number = |answer: &str, prefix: &str| {
        answer
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{answer:?} is not {prefix:?} and a number"))
    };
    number(&ask("cpu"), "cpu ");
    assert!(number(&ask("rss"), "rss ") > 0);
    assert_eq!(ask("write 2"), "ok");
    assert_eq!(ask("bare 3"), "ok");
    let bad = ask("nonsense");
    assert!(bad.starts_with("error "), "{bad}");
    let bad = ask("write two");
    assert!(bad.starts_with("error "), "{bad}");
    // Still answering after the errors.
    number(&ask("cpu"), "cpu ");

    drop(ask); // and with it the child's stdin
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            assert!(status.success(), "the server process failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server process did not exit at EOF on its stdin");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
