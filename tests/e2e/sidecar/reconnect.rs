//! The broker goes away: the files stay. It comes back on the same address
//! with the same store: the sidecar reconnects on its own and applies what
//! changed while it was gone.

use std::time::Duration;

use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, eventually, mint};

#[tokio::test(flavor = "multi_thread")]
async fn files_survive_a_broker_outage_and_changes_made_meanwhile_arrive() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::builder().store_dir(store.path()).start();
    let addr = broker.endpoint.trim_start_matches("http://").to_string();
    broker.put_map("shop/db", &[("password", "before")]).await;
    broker.put_map("shop/api", &[("key", "k-before")]).await;
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &mint(Key::Ec, "shop", "web"),
        "  - {path: shop/db#password, file: password}\n  - {path: shop/api#key, file: api-key}\n",
        SidecarOptions::default(),
    );
    sidecar.wait_for_files(&["password", "api-key"], Duration::from_secs(20));
    let read = |name: &str| std::fs::read_to_string(sidecar.file(name)).ok();

    broker.process.kill();
    sidecar.wait_for_log("keeping the last good files", Duration::from_secs(20));
    assert_eq!(read("password").as_deref(), Some("before"));
    assert_eq!(read("api-key").as_deref(), Some("k-before"));

    // A second broker on the same store changes one secret while the
    // sidecar cannot reach it (a different port), then the first address
    // comes back.
    {
        let elsewhere = BrokerProcess::builder().store_dir(store.path()).start();
        elsewhere
            .put_map("shop/db", &[("password", "during")])
            .await;
    }
    assert_eq!(
        read("password").as_deref(),
        Some("before"),
        "still the last good file"
    );

    broker = BrokerProcess::builder()
        .listen(&addr)
        .store_dir(store.path())
        .start();
    eventually(
        Duration::from_secs(60),
        "the change made during the outage",
        || (read("password")? == "during").then_some(()),
    );
    assert_eq!(read("api-key").as_deref(), Some("k-before"));

    // And the watch is live again.
    broker.put_map("shop/api", &[("key", "k-after")]).await;
    eventually(
        Duration::from_secs(20),
        "a change after reconnecting",
        || (read("api-key")? == "k-after").then_some(()),
    );
    let output = sidecar.process.output();
    assert!(output.matches("watching").count() >= 2, "{output}");
}
