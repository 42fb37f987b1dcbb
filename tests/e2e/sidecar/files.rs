//! Files land with the mode and owner asked for, only on tmpfs, and a write
//! that cannot complete (a full tmpfs) leaves the previous files intact.

use std::{os::unix::fs::MetadataExt, path::Path, time::Duration};

use coffer_tests::{
    BrokerProcess, Key, SidecarOptions, SidecarProcess, TinyTmpfs, eventually, mint,
};

fn token() -> String {
    mint(Key::Ec, "shop", "web")
}

#[tokio::test(flavor = "multi_thread")]
async fn mode_uid_and_gid_are_as_asked() {
    let broker = BrokerProcess::builder().start();
    broker
        .put_map("shop/db", &[("user", "u"), ("password", "p")])
        .await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        "  - {path: shop/db#password, file: password, mode: \"0440\", uid: 1234, gid: 5678}
  - {path: shop/db#user, file: user}
  - {path: shop/db, file: all.json, format: json, mode: \"0600\", gid: 4321}
",
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["password", "user", "all.json"], Duration::from_secs(20));
    let meta = |name: &str| std::fs::metadata(sidecar.file(name)).unwrap();
    let password = meta("password");
    assert_eq!(password.mode() & 0o7777, 0o440);
    assert_eq!((password.uid(), password.gid()), (1234, 5678));
    let user = meta("user");
    assert_eq!(user.mode() & 0o7777, 0o400, "the default mode is 0400");
    assert_eq!(
        (user.uid(), user.gid()),
        (0, 0),
        "the sidecar's own by default"
    );
    let all = meta("all.json");
    assert_eq!(all.mode() & 0o7777, 0o600);
    assert_eq!((all.uid(), all.gid()), (0, 4321));
    // Visible names are links into ..data, as the kubelet makes them.
    assert_eq!(
        std::fs::read_link(sidecar.file("password")).unwrap(),
        Path::new("..data/password")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_on_disk_is_refused() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/db", &[("password", "p")]).await;
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        "  - {path: shop/db#password, file: password}\n",
        SidecarOptions {
            out_parent: Some(disk.path()),
            ..Default::default()
        },
    );
    let status = sidecar
        .process
        .wait(Duration::from_secs(20))
        .expect("the sidecar refuses to start");
    assert!(!status.success());
    let output = sidecar.process.output();
    assert!(output.contains("is not on tmpfs or ramfs"), "{output}");
    assert!(!sidecar.file("password").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_tmpfs_keeps_the_old_files_and_logs_the_error() {
    let broker = BrokerProcess::builder().start();
    broker
        .put_map("shop/db", &[("a", "small-a"), ("b", "small-b")])
        .await;
    let tmpfs = TinyTmpfs::mount("16k");
    let mut sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &token(),
        "  - {path: shop/db#a, file: a}\n  - {path: shop/db#b, file: b}\n",
        SidecarOptions {
            out_parent: Some(tmpfs.path()),
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["a", "b"], Duration::from_secs(20));
    let before = sidecar.data_target().unwrap();

    // 64 KiB cannot fit in 16 KiB: the update must fail before the swap.
    let big = "x".repeat(64 * 1024);
    broker
        .put_map("shop/db", &[("a", &big), ("b", "new-b")])
        .await;
    sidecar.wait_for_log("update not applied", Duration::from_secs(20));

    assert_eq!(
        std::fs::read_to_string(sidecar.file("a")).unwrap(),
        "small-a"
    );
    assert_eq!(
        std::fs::read_to_string(sidecar.file("b")).unwrap(),
        "small-b"
    );
    assert_eq!(
        sidecar.data_target().unwrap(),
        before,
        "..data did not move"
    );
    let output = sidecar.process.output();
    assert!(output.contains("No space left on device"), "{output}");
    // No half-written update directory is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(sidecar.out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // Once the value fits again, the sidecar recovers on its own.
    broker
        .put_map("shop/db", &[("a", "fits-a"), ("b", "fits-b")])
        .await;
    eventually(Duration::from_secs(20), "the recovered files", || {
        (std::fs::read_to_string(sidecar.file("a")).ok()? == "fits-a").then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(sidecar.file("b")).unwrap(),
        "fits-b"
    );
    sidecar.process.kill();
    drop(sidecar);
    drop(tmpfs);
}
