//! A secret travels token → broker → store → sidecar → tmpfs file, and
//! follows changes; its value appears in no process output.

use std::{os::unix::fs::MetadataExt, time::Duration};

use coffer_tests::{BrokerProcess, Key, SidecarProcess, eventually, mint};

const CANARY: &str = "canary-7f3c9e1d-never-log-me";

async fn put(broker: &BrokerProcess, path: &str, value: &str) -> u64 {
    broker.put_bytes(path, value.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn secret_reaches_tmpfs_follows_changes_and_never_leaks() {
    let broker = BrokerProcess::builder().start();
    put(&broker, "shop/db", &format!("{CANARY}-v1")).await;

    // EC-signed workload token; RSA-signed operator token above.
    let sidecar = SidecarProcess::start(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - path: shop/db\n    file: db-password\n",
        &[],
    );
    let file = sidecar.file("db-password");
    eventually(Duration::from_secs(20), "the first file", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| s.ends_with("-v1"))
    });
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o400, "default mode is 0400");
    assert!(
        coffer_sidecar_is_tmpfs(sidecar.out_dir.path()),
        "the output directory is tmpfs"
    );

    put(&broker, "shop/db", &format!("{CANARY}-v2")).await;
    eventually(Duration::from_secs(20), "the rotated file", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| s.ends_with("-v2"))
    });

    // The sidecar acknowledged what it applied.
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let status = eventually(Duration::from_secs(10), "the acknowledgement of v2", || {
        let status = futures_lite_block(admin.status("shop/db")).unwrap();
        status
            .workloads
            .iter()
            .any(|w| w.version == 2)
            .then_some(status)
    });
    assert_eq!(status.current_version, 2);
    assert_eq!(status.workloads[0].namespace, "shop");

    for (name, output) in [
        ("broker", broker.process.output()),
        ("sidecar", sidecar.process.output()),
    ] {
        assert!(
            !output.is_empty(),
            "{name} logged nothing; the canary check would be empty"
        );
        assert!(
            !output.contains(CANARY),
            "{name} output holds the secret value:\n{output}"
        );
    }
}

fn coffer_sidecar_is_tmpfs(path: &std::path::Path) -> bool {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "tmpfs"
}

/// Runs a future to completion from inside a polling closure.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
