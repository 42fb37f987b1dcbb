//! Files handed to the app (chowned to its uid, mode 0400) are compared by
//! the digest of what the sidecar wrote, never by reading them back: a
//! sidecar without CAP_DAC_OVERRIDE cannot read them, and must not take that
//! for a change, rewrite them and re-run their action on every update.

use std::time::Duration;

use coffer_tests::{
    BrokerProcess, HupCounter, Key, SidecarOptions, SidecarProcess, eventually, mint, strip_ansi,
};

/// Runs the sidecar as root with CAP_CHOWN but without the capabilities that
/// let root read any file, as a pod that drops them would.
const WITHOUT_READ_OVERRIDE: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
    "--",
];

fn acked(broker: &BrokerProcess, path: &str, version: u64) {
    eventually(Duration::from_secs(20), "the acknowledgement", || {
        let acked = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(broker.acked_versions(path))
        });
        acked.contains(&version).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_another_secret_neither_rewrites_nor_signals_for_an_unreadable_file() {
    let broker = BrokerProcess::builder().start();
    let app = HupCounter::start();
    broker.put_map("shop/db", &[("password", "pw0")]).await;
    broker.put_map("shop/other", &[("v", "o0")]).await;
    let sidecar = SidecarProcess::start_wrapped(
        WITHOUT_READ_OVERRIDE,
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        &format!(
            "  - path: shop/db#password\n    file: password\n    mode: \"0400\"\n    uid: 4321\n    gid: 4321\n    action: {{signal: HUP, pidFile: {}}}\n  - {{path: shop/other#v, file: other}}\n",
            app.pid_file.display()
        ),
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["password", "other"], Duration::from_secs(20));
    let output = sidecar.process.output();
    // The premise: this sidecar cannot read the file it handed to the app.
    let unreadable = std::process::Command::new("setpriv")
        .args(&WITHOUT_READ_OVERRIDE[1..])
        .arg("cat")
        .arg(sidecar.file("password"))
        .output()
        .unwrap();
    assert!(!unreadable.status.success(), "{output}");

    for n in 1..=3 {
        let version = broker
            .put_map("shop/other", &[("v", &format!("o{n}"))])
            .await;
        acked(&broker, "shop/other", version);
        assert_eq!(
            std::fs::read_to_string(sidecar.file("other")).unwrap(),
            format!("o{n}")
        );
    }
    let output = strip_ansi(&sidecar.process.output());
    let written: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("secrets written"))
        .collect();
    assert_eq!(written.len(), 4, "{output}");
    let changed = |line: &str| {
        let start = line.find("changed=[").unwrap() + "changed=[".len();
        line[start..].split(']').next().unwrap().to_string()
    };
    for line in &written[1..] {
        assert_eq!(changed(line), "\"other\"", "{output}");
    }
    assert_eq!(output.matches("action done").count(), 0, "{output}");
    assert_eq!(app.count(), 0, "no SIGHUP for an unchanged file");

    // A real change of the app's file still signals it, exactly once.
    let version = broker.put_map("shop/db", &[("password", "pw1")]).await;
    acked(&broker, "shop/db", version);
    eventually(Duration::from_secs(20), "the SIGHUP", || {
        (app.count() >= 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(app.count(), 1, "{}", sidecar.process.output());
    assert_eq!(
        std::fs::read_to_string(sidecar.file("password")).unwrap(),
        "pw1"
    );
}
