//! A rotation swaps `..data` atomically: a reader running concurrently with
//! 1,000 rotations never sees a partial file, nor files of one update mixed
//! with files of another.

use std::{
    io::ErrorKind,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use coffer::{SecretBytes, SecretData};
use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, eventually, mint};

const ROTATIONS: u64 = 1000;
const FILES: [&str; 3] = ["a", "b", "c"];

/// One key's value in version `n`: long enough that a torn write would show.
fn value(key: &str, n: u64) -> String {
    format!("v{n}|{key}|{}|end-v{n}", "x".repeat(4096))
}

fn data(n: u64) -> SecretData {
    SecretData::Map(
        FILES
            .iter()
            .map(|k| (k.to_string(), SecretBytes::from(value(k, n).as_bytes())))
            .collect(),
    )
}

/// The version a whole value belongs to; `None` for anything torn.
fn version_of(key: &str, text: &str) -> Option<u64> {
    let n: u64 = text.strip_prefix('v')?.split('|').next()?.parse().ok()?;
    (text == value(key, n)).then_some(n)
}

#[derive(Default, Debug)]
struct Seen {
    consistent_reads: u64,
    vanished: u64,
    versions: std::collections::BTreeSet<u64>,
    violations: Vec<String>,
}

/// Reads every file of one update through one resolution of `..data`, and
/// each visible link on its own, until `stop`.
fn reader(root: &Path, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok(target) = std::fs::read_link(root.join("..data")) else {
            continue;
        };
        let dir = root.join(target);
        let mut versions = Vec::new();
        let mut vanished = false;
        for name in FILES.iter().chain(&["all.json"]) {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => versions.push((name.to_string(), text)),
                // An old update directory is removed after the swap: the
                // reader raced past it and will read the new one.
                Err(e) if e.kind() == ErrorKind::NotFound => vanished = true,
                Err(e) => seen.violations.push(format!("read {name}: {e}")),
            }
        }
        if vanished {
            seen.vanished += 1;
            continue;
        }
        let mut update_versions = std::collections::BTreeSet::new();
        for (name, text) in &versions {
            if name == "all.json" {
                let map: std::collections::BTreeMap<String, String> = match serde_json_lite(text) {
                    Some(map) => map,
                    None => {
                        seen.violations.push("all.json is not whole".into());
                        continue;
                    }
                };
                for (k, v) in &map {
                    match version_of(k, v) {
                        Some(n) => {
                            update_versions.insert(n);
                        }
                        None => seen.violations.push(format!("all.json[{k}] is torn")),
                    }
                }
            } else {
                match version_of(name, text) {
                    Some(n) => {
                        update_versions.insert(n);
                    }
                    None => seen.violations.push(format!("{name} is torn")),
                }
            }
        }
        if update_versions.len() == 1 {
            seen.consistent_reads += 1;
            seen.versions.extend(update_versions);
        } else {
            seen.violations
                .push(format!("one update mixes versions {update_versions:?}"));
        }
        // The visible names, each opened on its own, are whole too.
        for name in FILES {
            if let Ok(text) = std::fs::read_to_string(root.join(name))
                && version_of(name, &text).is_none()
            {
                seen.violations.push(format!("visible {name} is torn"));
            }
        }
    }
    seen
}

/// The JSON the sidecar writes is `{"k": "v", ...}` with plain values here;
/// parsing it by hand keeps serde_json out of this crate's dependencies.
fn serde_json_lite(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    body.split(",\n")
        .map(|entry| {
            let (k, v) = entry.trim().split_once(": ")?;
            Some((
                k.strip_prefix('"')?.strip_suffix('"')?.to_string(),
                v.strip_prefix('"')?.strip_suffix('"')?.to_string(),
            ))
        })
        .collect::<Option<_>>()
        .filter(|m: &std::collections::BTreeMap<String, String>| m.len() == FILES.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_never_sees_a_partial_or_mixed_update_over_1000_rotations() {
    let broker = BrokerProcess::builder().start();
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    admin
        .put(coffer::operator::Put::new("shop/rot", data(0)).content_type("text/plain"))
        .await
        .unwrap();
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/rot#a, file: a}
  - {path: shop/rot#b, file: b}
  - {path: shop/rot#c, file: c}
  - {path: shop/rot, file: all.json, format: json}
",
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["a", "b", "c", "all.json"], Duration::from_secs(20));

    let stop = Arc::new(AtomicBool::new(false));
    let root = sidecar.out_dir.path().to_path_buf();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || reader(&root, &stop))
    };

    let mut swaps = std::collections::BTreeSet::new();
    for n in 1..=ROTATIONS {
        admin
            .put(coffer::operator::Put::new("shop/rot", data(n)).content_type("text/plain"))
            .await
            .unwrap();
        // Wait for this rotation to land, so that each one is a real swap.
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(sidecar.file("a"))
            .ok()
            .and_then(|text| version_of("a", &text))
            != Some(n)
        {
            assert!(
                std::time::Instant::now() < until,
                "rotation {n} did not land"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        swaps.insert(sidecar.data_target().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().unwrap();

    assert!(
        seen.violations.is_empty(),
        "{:?}",
        &seen.violations[..seen.violations.len().min(20)]
    );
    assert_eq!(
        swaps.len() as u64,
        ROTATIONS,
        "every rotation swapped ..data"
    );
    assert!(
        seen.consistent_reads > 0 && seen.versions.len() > 1,
        "the reader ran across rotations: {seen:?}"
    );
    println!(
        "{} consistent reads across {} versions; {} raced a removed directory",
        seen.consistent_reads,
        seen.versions.len(),
        seen.vanished
    );
    // Old update directories are gone: one remains, the current one. The
    // files turn to the last version at the `..data` swap, and the writer
    // removes the previous directory just after it, so this is eventual.
    let update_dirs = || {
        std::fs::read_dir(sidecar.out_dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with("..") && name != "..data"
            })
            .count()
    };
    eventually(Duration::from_secs(10), "one update directory left", || {
        (update_dirs() == 1).then_some(())
    });
}
