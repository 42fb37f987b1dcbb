//! The sidecar's files read back by their real consumers: bash `source` and
//! python-dotenv for `dotenv`, PyYAML and ruamel.yaml for `yaml`. Hostile
//! values (quotes, backslashes, `$(...)`, `${HOME}`, newlines, tabs, CR,
//! U+FFFE, NUL where the format has a way to say it) come back exactly, and
//! nothing in them is executed or expanded.
//!
//! The Python readers come from `scripts/install-test-deps` (pinned, in
//! `.venv/`); the test fails, never skips, without them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, mint};

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-test-deps",
        python.display()
    );
    python
}

/// Runs a Python snippet that prints a JSON object of strings.
fn python_reads(script: &str, file: &Path) -> BTreeMap<String, String> {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Values every dotenv reader must get back exactly. `marker` is a path that
/// must never come to exist.
fn dotenv_values(marker: &str) -> Vec<(&'static str, String)> {
    vec![
        ("QUOTES", "she said \"hi\" and 'bye'".into()),
        (
            "BACKSLASHES",
            "C:\\path\\ \\\\server\\share\\ \\n \\t \\\"".into(),
        ),
        ("SUBSHELL", format!("$(touch {marker})")),
        ("BACKTICKS", format!("`touch {marker}`")),
        ("BRACED", "${HOME} and $HOME and ${HOME:-x}".into()),
        ("DOLLAR_QUOTES", "\"$HOME\" \\d $".into()),
        ("NEWLINES", "line one\nline two\n\nlast\n".into()),
        ("TABS", "a\tb\t".into()),
        ("CR", "a\r\nb\r".into()),
        ("NONCHARS", "x\u{fffe}y\u{ffff}z".into()),
        (
            "CONTROL",
            "bell\u{7} esc\u{1b}[31m del\u{7f} nel\u{85}".into(),
        ),
        ("SPACES", "  lead and trail  ".into()),
        ("COMMENT", "a #not a comment".into()),
        ("EMPTY", String::new()),
    ]
}

/// Values bash reads exactly, for which no form also suits python-dotenv
/// (`$` or a backtick together with `'`): written for bash, and warned about.
fn bash_only_values(marker: &str) -> Vec<(&'static str, String)> {
    vec![(
        "BASH_ONLY",
        format!("it's $(touch {marker}) \\\\ `id` $HOME"),
    )]
}

fn yaml_values() -> Vec<(&'static str, String)> {
    vec![
        ("quotes", "\"double\" 'single'".into()),
        ("backslash", "C:\\path\\ \\n".into()),
        ("nul", "a\0b".into()),
        ("nonchars", "x\u{fffe}y\u{ffff}z".into()),
        (
            "controls",
            "\u{1}\u{7}\u{1b}\u{7f}\u{80}\u{85}\u{9f}".into(),
        ),
        ("breaks", "a\nb\r\nc\u{2028}d\u{2029}".into()),
        ("bom", "\u{feff}lead".into()),
        ("tabs", "\ta\t".into()),
        ("typed", "yes".into()),
        ("octal", "0400".into()),
        ("null", "~".into()),
        ("flow", "- x: {y: [z]}".into()),
        ("comment", "#c".into()),
        ("astral", "😀 \u{10ffff}".into()),
        ("empty", String::new()),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn dotenv_and_yaml_round_trip_through_bash_python_dotenv_pyyaml_and_ruamel() {
    let scratch = tempfile::tempdir().unwrap();
    let marker = scratch.path().join("executed");
    let marker_str = marker.display().to_string();
    let dotenv: Vec<(&str, String)> = dotenv_values(&marker_str)
        .into_iter()
        .chain(bash_only_values(&marker_str))
        .collect();
    let yaml = yaml_values();

    let broker = BrokerProcess::builder().start();
    let dotenv_pairs: Vec<(&str, &str)> = dotenv.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let yaml_pairs: Vec<(&str, &str)> = yaml.iter().map(|(k, v)| (*k, v.as_str())).collect();
    broker.put_map("shop/env", &dotenv_pairs).await;
    broker.put_map("shop/yaml", &yaml_pairs).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/env, file: app.env, format: dotenv}\n  - {path: shop/yaml, file: app.yaml, format: yaml}\n",
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["app.env", "app.yaml"], Duration::from_secs(20));
    let env_file = sidecar.file("app.env");
    let yaml_file = sidecar.file("app.yaml");

    // bash: source the file, print each variable NUL-terminated.
    let keys: Vec<&str> = dotenv.iter().map(|(k, _)| *k).collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"set -eu; source "$1"; shift; for k in "$@"; do printf '%s\0' "${!k}"; done"#)
        .arg("bash")
        .arg(&env_file)
        .args(&keys)
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    for (i, (key, value)) in dotenv.iter().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(read[i]),
            *value,
            "bash read {key} differently"
        );
    }
    assert!(!marker.exists(), "bash executed something from a value");

    // python-dotenv, as the docs say to read it: interpolate=False, and the
    // file opened with newline='' so that Python keeps carriage returns.
    let back = python_reads(
        "import sys, json\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(stream=open(sys.argv[1], encoding='utf-8', newline=''), interpolate=False)))",
        &env_file,
    );
    for (key, value) in dotenv_values(&marker_str) {
        assert_eq!(
            back.get(key),
            Some(&value),
            "python-dotenv read {key} differently"
        );
    }
    // Its default interpolates `${HOME}` even inside quotes: hence the
    // warning, which names the file and the key but not the value.
    let default = python_reads(
        "import sys, json\nfrom dotenv import dotenv_values\nprint(json.dumps(dotenv_values(sys.argv[1])))",
        &env_file,
    );
    assert_ne!(default.get("BRACED"), back.get("BRACED"));
    let log = sidecar.process.output();
    let warning = log
        .lines()
        .find(|l| l.contains("python-dotenv substitutes") && l.contains("BRACED"))
        .unwrap_or_else(|| panic!("no interpolation warning:\n{log}"));
    assert!(warning.contains("app.env"), "{warning}");
    for (needle, key) in [("written for bash", "BASH_ONLY"), ("carriage return", "CR")] {
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && l.contains(&format!("key=\"{key}\""))),
            "{log}"
        );
    }
    for (key, value) in dotenv.iter().chain(yaml.iter()) {
        if value.len() > 3 {
            assert!(!log.contains(value.as_str()), "{key}'s value is in the log");
        }
    }

    // PyYAML and ruamel (safe and round-trip loaders).
    for (reader, script) in [
        (
            "PyYAML",
            "import sys, json, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))",
        ),
        (
            "ruamel safe",
            "import sys, json\nfrom ruamel.yaml import YAML\nprint(json.dumps(YAML(typ='safe', pure=True).load(open(sys.argv[1], encoding='utf-8'))))",
        ),
        (
            "ruamel rt",
            "import sys, json\nfrom ruamel.yaml import YAML\nprint(json.dumps(dict(YAML().load(open(sys.argv[1], encoding='utf-8')))))",
        ),
    ] {
        let back = python_reads(script, &yaml_file);
        assert_eq!(back.len(), yaml.len(), "{reader}: {back:?}");
        for (key, value) in &yaml {
            assert_eq!(
                back.get(*key),
                Some(value),
                "{reader} read {key} differently"
            );
        }
    }
}
