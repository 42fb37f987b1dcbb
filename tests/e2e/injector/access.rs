//! Who may reach the injector (issue #22). Only the API server needs
//! `/mutate`, and a NetworkPolicy cannot name it: the shipped policy admits
//! the webhook port alone (the injector serves nothing else), and
//! `--allow-cidr` (env `COFFER_INJECTOR_ALLOW_CIDRS`) lets an operator
//! name the control plane's and the nodes' addresses, so that any other
//! caller is turned away before the TLS handshake, also where the network
//! plugin does not enforce NetworkPolicy.

use crate::injector::common as injector_common;

use std::process::Command;

use coffer_tests::deploy;
use injector_common::{Injector, opted_in};
use serde_json::{Value, json};

#[test]
fn a_caller_outside_the_allowed_networks_is_turned_away() {
    let injector = Injector::start_with(&["--allow-cidr=10.0.0.0/8,fd00::/8"]);
    assert_eq!(injector.request("GET", "/healthz", b""), None);
    let body = injector_common::review("CREATE", "shop", Some(&opted_in()), None, None);
    assert_eq!(
        injector.request("POST", "/mutate", body.to_string().as_bytes()),
        None
    );
}

#[test]
fn a_caller_inside_the_allowed_networks_is_served() {
    let injector = Injector::start_with(&["--allow-cidr=10.0.0.0/8", "--allow-cidr=127.0.0.0/8"]);
    assert_eq!(injector.request("GET", "/healthz", b"").unwrap().0, 200);
    assert_eq!(injector.create(&opted_in())["patchType"], "JSONPatch");
}

#[test]
fn a_malformed_cidr_is_a_usage_error() {
    for bad in ["10.0.0.0/33", "10.0.0/8", "localhost/8", "::1/129"] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(coffer_tests::binary("coffer-injector"))
            .args([
                "--listen=127.0.0.1:0",
                "--tls-cert=/nonexistent",
                "--tls-key=/nonexistent",
                "--sidecar-image=coffer/sidecar:0.1.0",
            ])
            .arg(format!("--allow-cidr={bad}"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{bad}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("allow-cidr"), "{bad}: {stderr}");
    }
}

#[test]
fn the_shipped_network_policy_admits_the_webhook_port_alone() {
    for overlay in ["overlays/vault", "overlays/tokenreview", "overlays/dev"] {
        let objects = deploy::objects(overlay);
        let deployment = deploy::find(&objects, "Deployment", "coffer-injector");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["ports"],
            json!([{"name": "https", "containerPort": 8443}]),
            "{overlay}: the injector serves one port"
        );
        let policy = deploy::find(&objects, "NetworkPolicy", "coffer-injector");
        assert_eq!(
            policy["spec"]["podSelector"], deployment["spec"]["selector"],
            "{overlay}"
        );
        let types = policy["spec"]["policyTypes"].as_array().unwrap();
        assert!(types.contains(&json!("Ingress")) && types.contains(&json!("Egress")));
        assert_eq!(
            policy["spec"]["egress"],
            json!([]),
            "{overlay}: it calls nothing"
        );
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        assert!(!rules.is_empty(), "{overlay}");
        for rule in rules {
            assert_eq!(
                rule["ports"],
                json!([{"port": 8443, "protocol": "TCP"}]),
                "{overlay}: {rule}"
            );
        }
        // The injector reads the same list from its environment; it is
        // empty as shipped (any address), and documented.
        let env = container["env"].as_array().unwrap();
        let allow = env
            .iter()
            .find(|e| e["name"] == "COFFER_INJECTOR_ALLOW_CIDRS")
            .unwrap_or_else(|| panic!("{overlay}: no COFFER_INJECTOR_ALLOW_CIDRS"));
        assert_eq!(allow["value"], Value::from(""), "{overlay}");
    }
}

#[test]
fn the_shipped_empty_allow_list_admits_any_address() {
    // As deploy/base sets it: an empty value is no restriction.
    let injector = Injector::start_with(&["--allow-cidr="]);
    let answer = injector.request("GET", "/healthz", b"");
    assert_eq!(answer.map(|(status, _)| status), Some(200));
}
