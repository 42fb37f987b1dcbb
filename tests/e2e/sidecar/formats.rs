//! Every output format, end to end through the real broker and sidecar,
//! matches its golden file byte for byte. Set `UPDATE_GOLDEN=1` to rewrite
//! the golden files after a deliberate format change (and review the diff).

use std::{path::PathBuf, time::Duration};

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, mint};

/// Values chosen to break naive escaping in every format.
const SECRET: &[(&str, &str)] = &[
    ("USER", "app"),
    ("PASSWORD", "p@ss w0rd\"'$HOME`x`\\n"),
    ("MULTILINE", "line one\nline two\r\n\tindented\n"),
    ("SPECIALS", "a=b:c#d!e {x} [y] &z *w | > %"),
    ("UNICODE", "naïve café ☕ 😀 \u{1}"),
    ("SPACES", "  leading and trailing  "),
    ("EMPTY", ""),
    ("BACKSLASH", "C:\\path\\to\\file\\"),
    ("YAMLISH", "yes"),
    ("NUMBERISH", "0400"),
];

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_matches_its_golden_file() {
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/config", SECRET).await;
    let template = golden_dir().join("app.conf.j2");
    let secrets = format!(
        "  - {{path: shop/config#PASSWORD, file: password}}
  - {{path: shop/config#PASSWORD, file: password.env, format: dotenv}}
  - {{path: shop/config, file: config.json, format: json}}
  - {{path: shop/config, file: config.env, format: dotenv}}
  - {{path: shop/config, file: config.properties, format: properties}}
  - {{path: shop/config, file: config.yaml, format: yaml}}
  - {{path: shop/config, file: app.conf, format: template, templateFile: {}}}
",
        template.display()
    );
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        &secrets,
        SidecarOptions::default(),
    );
    let names = [
        "password",
        "password.env",
        "config.json",
        "config.env",
        "config.properties",
        "config.yaml",
        "app.conf",
    ];
    sidecar.wait_for_files(&names, Duration::from_secs(20));

    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for name in names {
        let have = std::fs::read(sidecar.file(name)).unwrap();
        let golden = golden_dir().join(format!("{name}.golden"));
        if update {
            std::fs::write(&golden, &have).unwrap();
            continue;
        }
        let want = std::fs::read(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 makes it)", golden.display()));
        if have != want {
            mismatches.push(format!(
                "{name}:\n--- want\n{}\n--- have\n{}",
                String::from_utf8_lossy(&want),
                String::from_utf8_lossy(&have)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // No value reaches the logs, whatever the format.
    let output = sidecar.process.output();
    assert!(!output.is_empty());
    for (key, value) in SECRET {
        if value.len() > 4 {
            assert!(
                !output.contains(value),
                "{key}'s value is in the sidecar's output"
            );
        }
    }
    // The raw file is the value's exact bytes.
    assert_eq!(
        std::fs::read(sidecar.file("password")).unwrap(),
        SECRET[1].1.as_bytes()
    );
}
