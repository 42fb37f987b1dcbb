//! A sidecar SIGKILLed while it writes (a node's OOM killer, a kubelet
//! giving up on a slow container) leaves the app's files complete: each
//! visible file is a whole version, every file of the directory from the
//! same update. The sidecar that starts next in the same directory (the
//! container restarted, the emptyDir kept) cleans up the update directories
//! the killed one left behind: they hold older secret values and are no
//! business of anyone's.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use coffer_tests::{BrokerProcess, Key, Process, binary, eventually, mint};

/// Large enough that a write takes a while, so kills land inside one.
const VALUE_BYTES: usize = 384 * 1024;

/// `key`'s value at version `n`: a header naming both, padded to size.
fn value(key: &str, n: u64) -> String {
    let head = format!("{key}:{n}:");
    format!("{head}{}", "x".repeat(VALUE_BYTES - head.len()))
}

/// The version a complete file holds, `None` for a torn or foreign one.
fn version_of(key: &str, text: &str) -> Option<u64> {
    let rest = text.strip_prefix(key)?.strip_prefix(':')?;
    let (n, _) = rest.split_once(':')?;
    let n: u64 = n.parse().ok()?;
    (text == value(key, n)).then_some(n)
}

fn start_sidecar(config: &Path, log: PathBuf) -> Process {
    let mut command = Command::new(binary("coffer-sidecar"));
    command.arg("--config").arg(config);
    Process::spawn(command, log)
}

/// The update directories (`..<time>.<random>`) under `root`.
fn update_dirs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".."))
        .collect()
}

/// What a careful app sees now: both files, read through one resolution
/// of `..data` (two separate reads may straddle an update, as with the
/// kubelet's own volumes), complete and of one version; `None` before the
/// first write. Panics on a torn or mixed update.
fn check_visible(root: &Path) -> Option<u64> {
    for _ in 0..1000 {
        let update = std::fs::read_link(root.join("..data")).ok()?;
        let read = |key: &str| std::fs::read_to_string(root.join(&update).join(key));
        let (a, b) = match (read("a"), read("b")) {
            (Ok(a), Ok(b)) => (a, b),
            // The update directory was replaced and removed between the
            // link and the reads: resolve again.
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            (Err(e), _) | (_, Err(e)) => panic!("reading {}: {e}", update.display()),
        };
        let va = version_of("a", &a).expect("file a is a whole version");
        let vb = version_of("b", &b).expect("file b is a whole version");
        assert_eq!(va, vb, "both files come from the same update");
        return Some(va);
    }
    panic!("..data kept pointing at removed update directories");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_killed_mid_write_leaves_whole_files_and_its_successor_cleans_up() {
    let _heavy = coffer_tests::serial::heavy();
    let broker = BrokerProcess::builder().start();
    let put = |n: u64| {
        let (a, b) = (value("a", n), value("b", n));
        let broker = &broker;
        async move { broker.put_map("shop/db", &[("a", &a), ("b", &b)]).await }
    };
    put(1).await;

    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::Builder::new()
        .prefix("coffer-e2e-")
        .tempdir_in("/dev/shm")
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, mint(Key::Ec, "shop", "web")).unwrap();
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(
        &config,
        format!(
            "broker: {}\ntokenFile: {}\noutputDir: {}\nsecrets:\n  - {{path: shop/db#a, file: a}}\n  - {{path: shop/db#b, file: b}}\n",
            broker.endpoint,
            token_file.display(),
            out.path().display(),
        ),
    )
    .unwrap();

    // Rotations as fast as the broker takes them, from another task.
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(1));
    let rotator = {
        let (stop, last) = (Arc::clone(&stop), Arc::clone(&last));
        let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
        tokio::spawn(async move {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let map = [("a", value("a", n)), ("b", value("b", n))]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), coffer::SecretBytes::from(v.as_bytes())))
                    .collect();
                let put = coffer::operator::Put::new("shop/db", coffer::SecretData::Map(map));
                admin.put(put).await.unwrap();
                last.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let mut kills = 0;
    let mut mid_write = 0;
    let mut seen = 0;
    for round in 0..12u64 {
        let mut sidecar = start_sidecar(&config, dir.path().join(format!("sidecar-{round}.log")));
        // Wait for a first update of this round, then kill at a moment that
        // moves from round to round, inside a write or between two.
        eventually(Duration::from_secs(20), "a write by this sidecar", || {
            (check_visible(out.path())? > seen).then_some(())
        });
        if round % 2 == 0 {
            // At a moment that moves from round to round.
            tokio::time::sleep(Duration::from_millis(7 * round % 60)).await;
        } else {
            // As soon as an update directory is being filled: inside a write.
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while update_dirs(out.path()).len() < 2 && std::time::Instant::now() < until {}
        }
        sidecar.kill();
        kills += 1;
        // More than one update directory: this kill landed inside a write.
        if update_dirs(out.path()).len() > 1 {
            mid_write += 1;
        }
        // What the app sees after the kill: whole files of one version, never
        // going back before what it saw already.
        let now = check_visible(out.path()).expect("files stay after the kill");
        assert!(now >= seen, "went back from {seen} to {now}");
        seen = now;
    }
    stop.store(true, Ordering::Relaxed);
    rotator.await.unwrap();
    let final_version = last.load(Ordering::Relaxed);

    // A successor in the same directory catches up and leaves one update
    // directory: the one `..data` points at.
    let successor = start_sidecar(&config, dir.path().join("successor.log"));
    eventually(Duration::from_secs(20), "the last version", || {
        (check_visible(out.path())? == final_version).then_some(())
    });
    eventually(Duration::from_secs(10), "the leftovers removed", || {
        (update_dirs(out.path()).len() == 1).then_some(())
    });
    let current = std::fs::read_link(out.path().join("..data")).unwrap();
    assert_eq!(
        update_dirs(out.path()),
        vec![current.to_string_lossy().into_owned()]
    );
    for key in ["a", "b"] {
        assert_eq!(
            std::fs::read_link(out.path().join(key)).unwrap(),
            Path::new("..data").join(key),
            "the visible name links into ..data"
        );
    }
    for entry in std::fs::read_dir(out.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            ["a", "b", "..data"].contains(&name.as_str()) || name == current.to_string_lossy(),
            "a leftover entry {name}"
        );
    }
    println!(
        "reliability: sidecar_killed_mid_write: kills={kills} inside_a_write={mid_write} versions_written={final_version} torn_files=0 leftovers_after_restart=0"
    );
    drop(successor);
}
