//! The SDK's `FileSecret` against the real sidecar: one yield per rotation
//! the sidecar publishes, each the whole new file.

use std::time::Duration;

use coffer::FileSecret;
use coffer_tests::{BrokerProcess, Key, SidecarProcess, mint};

#[tokio::test(flavor = "multi_thread")]
async fn file_watch_yields_each_sidecar_rotation() {
    let broker = BrokerProcess::builder().start();
    broker.put_bytes("shop/db", b"pw-1").await;
    let sidecar = SidecarProcess::start(
        &broker,
        &mint(Key::Ec, "shop", "web"),
        "  - path: shop/db\n    file: password\n",
        &[],
    );
    sidecar.wait_for_files(&["password"], Duration::from_secs(20));
    let file = FileSecret::new(sidecar.out_dir.path(), "password");
    let mut watch = file.watch().unwrap();
    assert_eq!(file.read().unwrap().expose(), b"pw-1");

    for n in 2..=4 {
        let want = format!("pw-{n}");
        broker.put_bytes("shop/db", want.as_bytes()).await;
        let value = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the swap is seen")
            .expect("still watching")
            .unwrap();
        assert_eq!(value.expose(), want.as_bytes());
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&file.read_str().unwrap()),
            want
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watch.next())
            .await
            .is_err(),
        "nothing without a rotation"
    );
}
