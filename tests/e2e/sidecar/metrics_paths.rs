//! The probe port is reachable from the pod network, so its `/metrics`
//! names no secret: no path, no key, no version label, only counts.

use std::time::Duration;

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, http, mint};

#[tokio::test(flavor = "multi_thread")]
async fn the_probe_ports_metrics_name_no_secret_path() {
    let broker = BrokerProcess::builder().start();
    broker
        .put_map("shop/payments-db", &[("password", "pw")])
        .await;
    broker.put_map("shop/api-keys", &[("stripe", "k")]).await;
    broker.put_map("shop/api-keys", &[("stripe", "k2")]).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/payments-db#password, file: password}\n  - {path: shop/api-keys, file: keys.json, format: json}\n",
        SidecarOptions {
            global_yaml: "adminListen: 127.0.0.1:0\n",
            ..Default::default()
        },
    );
    sidecar.wait_for_files(&["password", "keys.json"], Duration::from_secs(30));
    let (status, page) = http(&sidecar.admin_addr(), "GET", "/metrics").unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("coffer_sidecar_files_written_total"),
        "a real page: {page}"
    );
    for name in ["shop", "payments-db", "api-keys", "password", "stripe"] {
        assert!(
            !page.contains(name),
            "the probe port's /metrics names {name:?}:\n{page}"
        );
    }
    assert!(
        !page.contains("path=") && !page.contains("version="),
        "no per-secret label:\n{page}"
    );
}
