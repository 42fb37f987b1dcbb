//! Every shipped kustomization whose broker writes an audit file keeps the
//! whole trail inside the volume holding it: at most `--audit-keep` rotated
//! files plus the live one, each at most `--audit-max-bytes`, is at most
//! 80 % of the volume's `sizeLimit` (issue #22). Past the limit the kubelet
//! evicts the pod and the trail (an emptyDir) is lost with it.
//!
//! The defaults of flags an overlay leaves out are read from the real
//! binary's `--help`, so a changed default is checked too.

use std::process::Command;

use coffer_tests::{
    binary,
    deploy::{KUSTOMIZATIONS, objects},
};
use serde_json::Value;

/// The share of the volume the trail may fill.
const HEADROOM_PERCENT: u128 = 80;

/// The default of `flag` shown by `coffer-broker serve --help`.
fn help_default(flag: &str) -> u128 {
    let output = Command::new(binary("coffer-broker"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let mut lines = help
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(flag));
    lines
        .next()
        .unwrap_or_else(|| panic!("{flag} not in --help"));
    // The flag's text runs to the next flag; clap puts `[default: ...]`
    // at the end of the description or, in the long layout, on a line
    // of its own.
    let text: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with('-'))
        .collect();
    let value = text
        .iter()
        .find_map(|l| l.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("{flag} has no default: {text:?}"));
    value.parse().unwrap()
}

/// A Kubernetes quantity (`256Mi`, `1G`, `1048576`) in bytes.
fn quantity(text: &str) -> u128 {
    let suffixes: [(&str, u128); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u128>().unwrap() * factor;
        }
    }
    text.parse().unwrap_or_else(|_| panic!("quantity {text:?}"))
}

/// The value of `--name=V` or `--name V` in `args`, else of `env` in the
/// container's environment.
fn setting(container: &Value, name: &str, env: &str) -> Option<String> {
    let args: Vec<&str> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let flag = format!("--{name}");
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
            return Some(value.to_string());
        }
        if *arg == flag {
            return args.get(i + 1).map(|s| s.to_string());
        }
    }
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == env)
        .and_then(|e| e["value"].as_str())
        .map(str::to_string)
}

/// What one kustomization's broker may write, and where: (kustomization,
/// bytes the trail may reach, the volume's sizeLimit).
fn audit_budgets() -> Vec<(String, u128, u128)> {
    let default_max = help_default("--audit-max-bytes");
    let default_keep = help_default("--audit-keep");
    let mut budgets = Vec::new();
    for kustomization in KUSTOMIZATIONS {
        let objects = objects(kustomization);
        let Some(broker) = objects
            .iter()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "coffer-broker")
        else {
            continue;
        };
        let pod = &broker["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "broker")
            .unwrap();
        let Some(file) = setting(container, "audit-file", "COFFER_AUDIT_FILE") else {
            continue;
        };
        assert_ne!(
            file, "-",
            "{kustomization}: audit to stdout is not sized here"
        );
        let max: u128 = setting(container, "audit-max-bytes", "COFFER_AUDIT_MAX_BYTES")
            .map_or(default_max, |v| v.parse().unwrap());
        let keep: u128 = setting(container, "audit-keep", "COFFER_AUDIT_KEEP")
            .map_or(default_keep, |v| v.parse().unwrap());
        assert!(max > 0, "{kustomization}: the audit file is never rotated");
        assert!(
            keep > 0,
            "{kustomization}: every rotated audit file is kept"
        );
        // The volume mounted deepest above the file.
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                let at = m["mountPath"].as_str().unwrap().trim_end_matches('/');
                file.starts_with(&format!("{at}/"))
            })
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| {
                panic!(
                    "{kustomization}: {file} is on no volume (the root file system is read-only)"
                )
            });
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let limit = volume["emptyDir"]["sizeLimit"].as_str().unwrap_or_else(|| {
            panic!("{kustomization}: the audit volume {volume} is not an emptyDir with a sizeLimit")
        });
        budgets.push((kustomization.to_string(), (keep + 1) * max, quantity(limit)));
    }
    budgets
}

#[test]
fn every_overlay_keeps_its_audit_trail_within_80_percent_of_its_volume() {
    let budgets = audit_budgets();
    assert!(
        budgets.iter().any(|(k, _, _)| k == "overlays/vault"),
        "the vault overlay writes an audit file: {budgets:?}"
    );
    for (kustomization, trail, limit) in &budgets {
        assert!(
            trail * 100 <= limit * HEADROOM_PERCENT,
            "{kustomization}: the audit trail may reach {} MiB ((keep+1) x max-bytes), \
             more than {HEADROOM_PERCENT} % of its volume's sizeLimit of {} MiB",
            trail >> 20,
            limit >> 20
        );
    }
}

#[test]
fn quantities_are_read_as_kubernetes_writes_them() {
    assert_eq!(quantity("256Mi"), 256 << 20);
    assert_eq!(quantity("1Gi"), 1 << 30);
    assert_eq!(quantity("500M"), 500_000_000);
    assert_eq!(quantity("1048576"), 1 << 20);
}
