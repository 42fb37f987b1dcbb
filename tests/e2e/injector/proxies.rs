//! `coffer.dev/proxy-<name>` through the real injector: a pod with a proxy
//! and no secret gets a sidecar whose configuration the real sidecar
//! accepts, with the proxy named by the annotation and the upstream's CA
//! (a key of the CA ConfigMap) mounted beside the broker's; the patched pod
//! validates strictly. What cannot work in a pod is refused at admission,
//! naming the annotation or the proxy. (Each refusal of the parser: the
//! unit tests in injector/src/proxies.rs and patch.rs.)

use std::process::Command;

use coffer_tests::deploy::kubernetes_validate;
use serde_json::{Value, json};

use crate::injector::common::{Injector, apply, pod, refusal};

const PROXY: &str = "{protocol: postgres, listen: 127.0.0.1:5432, upstream: db.shop.svc:5432, path: shop/pg, tls: {caFile: /etc/coffer/ca/db-ca.crt, serverName: db.shop.svc}}";

#[test]
fn a_proxy_annotation_gives_the_sidecar_a_proxy_and_the_ca_it_names() {
    let injector = Injector::start();
    let pod = pod(json!({"coffer.dev/proxy-db": PROXY}));
    let patched = apply(pod.clone(), &injector.create(&pod));

    let config = patched["metadata"]["annotations"]["coffer.dev/sidecar-config"]
        .as_str()
        .unwrap();
    let parsed: Value = serde_norway::from_str(config).unwrap();
    assert_eq!(
        parsed["proxies"],
        json!([{
            "name": "db", "protocol": "postgres", "listen": "127.0.0.1:5432",
            "upstream": "db.shop.svc:5432", "path": "shop/pg",
            "tls": {"caFile": "/etc/coffer/ca/db-ca.crt", "serverName": "db.shop.svc"},
        }])
    );
    let ca = patched["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "coffer-ca")
        .unwrap();
    let keys: Vec<&str> = ca["configMap"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ca.crt", "db-ca.crt"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.yaml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(coffer_tests::binary("coffer-sidecar"))
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pod_file = dir.path().join("pod.yaml");
    std::fs::write(&pod_file, format!("{patched}\n")).unwrap();
    kubernetes_validate(&pod_file);
}

#[test]
fn proxy_annotations_that_cannot_work_in_a_pod_are_refused_naming_them() {
    let injector = Injector::start();
    for (annotations, says) in [
        (
            json!({"coffer.dev/proxy-db": PROXY.replace("127.0.0.1:5432", "0.0.0.0:5432")}),
            "proxy \"db\": listen 0.0.0.0:5432 must be a loopback address",
        ),
        (
            json!({"coffer.dev/proxy-db": PROXY.replace(", tls: {caFile: /etc/coffer/ca/db-ca.crt, serverName: db.shop.svc}", "")}),
            "proxy \"db\": upstream \"db.shop.svc:5432\" is off this machine: set `tls`",
        ),
        (
            json!({"coffer.dev/proxy-db": PROXY.replace("127.0.0.1:5432", "/run/pg/.s.PGSQL.5432")}),
            "\"coffer.dev/proxy-db\": listen \"/run/pg/.s.PGSQL.5432\": a Unix socket needs a volume",
        ),
        (
            json!({"coffer.dev/proxy-db": PROXY.replace("/etc/coffer/ca/db-ca.crt", "/etc/ssl/db.pem")}),
            "\"coffer.dev/proxy-db\": tls.caFile \"/etc/ssl/db.pem\": the sidecar sees only the CA ConfigMap's files",
        ),
        (
            json!({"coffer.dev/proxy-db": PROXY, "coffer.dev/sidecar-mode": "init-only"}),
            "\"coffer.dev/sidecar-mode\": init-only writes the files once and exits, and a proxy",
        ),
        (
            json!({"coffer.dev/proxy-": PROXY}),
            "unknown annotation \"coffer.dev/proxy-\"",
        ),
    ] {
        let message = refusal(&injector.create(&pod(annotations.clone())));
        assert!(message.contains(says), "{annotations}: {message}");
    }
}
