//! A full disk: the record that did not fit is cut back, requests are
//! refused meanwhile, and once space is freed the whole trail verifies.
//! Needs root to mount a small tmpfs; skipped (with a message) otherwise.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use coffer::Code;
use coffer_tests::{BrokerProcess, Key, audit_verify, mint};

/// A 64 KiB tmpfs, unmounted on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path) -> Option<Self> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `file` until a write fails.
fn fill(file: &Path) {
    let mut filler = std::fs::File::create(file).unwrap();
    let chunk = [0u8; 512];
    while filler.write_all(&chunk).is_ok() {}
    while filler.write_all(&chunk[..1]).is_ok() {}
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_cut_short_by_a_full_disk_does_not_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = SmallTmpfs::mount(dir.path()) else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let audit = dir.path().join("audit.log");
    let broker = BrokerProcess::builder()
        .audit_file(&audit)
        .args(["--audit-aggregate-interval", "0s"])
        .start();
    broker.put_bytes("shop/db", b"v").await;
    let web = broker.client(mint(Key::Ec, "shop", "web")).await;
    web.get("shop/db").await.unwrap();

    let filler = dir.path().join("filler");
    fill(&filler);
    // The slack of the audit file's last page takes a few records; then one
    // is cut short by the full disk and the request is refused.
    let mut refused = false;
    for _ in 0..100 {
        match web.get("shop/db").await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the full disk never refused a request");
    let bytes = std::fs::read(&audit).unwrap();
    assert!(
        bytes.ends_with(b"\n"),
        "a partial record was left at the end of the audit file"
    );

    std::fs::remove_file(&filler).unwrap();
    web.get("shop/db").await.unwrap();
    let (code, out) = audit_verify([&audit]);
    assert_eq!(code, 0, "{out}");
    drop(broker);
}
