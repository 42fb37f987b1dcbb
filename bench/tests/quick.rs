//! `coffer-bench --quick` runs every mode and prints its table. Timings are
//! never asserted: only that each mode produced its rows against both servers.

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
        "| GetSecret 1 x 4: req/s |",
        "| GetSecret 1 x 4: server CPU/req |",
        "| cold token 1 x 16: req/s |",
        "vs ring RS256 verify/s",
        "| rotation to 50 over 5: last receiver |",
        "RSS per stream",
    ] {
        assert!(stdout.contains(row), "missing {row:?} in\n{stdout}");
    }
}
