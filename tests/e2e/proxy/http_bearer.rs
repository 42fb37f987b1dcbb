//! The HTTP proxy: `curl` with no token reaches a local HTTPS server that
//! checks the bearer token; a rotated token is used by the next request.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use coffer_tests::{
    BrokerProcess, SidecarOptions, SidecarProcess, free_port, https::HttpsServer, pod_token,
};

const FIRST: &str = "tok-first-5d1c0a77";
const SECOND: &str = "tok-second-9e2b4f13";

fn curl(port: u16) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", "Connection: close, X-Private", "-H", "X-Private: 1"])
        .arg(format!("http://127.0.0.1:{port}/orders?id=7"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (status.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_the_http_proxy_carries_the_current_bearer_token() {
    let expected = Arc::new(Mutex::new(FIRST.to_string()));
    let want = expected.clone();
    let server = HttpsServer::start(Arc::new(move |seen| {
        let good = format!("Bearer {}", want.lock().unwrap());
        match seen.authorization.as_deref() {
            Some(got) if got == good => (200, format!("{{\"path\": \"{}\"}}", seen.path)),
            _ => (401, "{}".into()),
        }
    }));
    let broker = BrokerProcess::builder().start();
    broker.put_map("shop/api", &[("token", FIRST)]).await;
    let port = free_port();
    let global = format!(
        "proxies:\n  - {{name: api, protocol: http, listen: 127.0.0.1:{port}, upstream: \"{}\", path: shop/api, auth: {{type: bearer}}, tls: {{caFile: {}}}}}\n",
        server.url,
        server.ca_file.display()
    );
    let sidecar = SidecarProcess::start_with(
        &broker.endpoint,
        &pod_token("web-a"),
        "  []\n",
        SidecarOptions {
            global_yaml: &global,
            ..Default::default()
        },
    );
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !sidecar
        .process
        .output()
        .contains("every secret is written; ready")
    {
        assert!(
            std::time::Instant::now() < until,
            "not ready:\n{}",
            sidecar.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = tokio::task::spawn_blocking(move || curl(port))
        .await
        .unwrap();
    assert_eq!(status, "200", "{body}");
    assert_eq!(body, "{\"path\": \"/orders\"}");

    *expected.lock().unwrap() = SECOND.to_string();
    broker.put_map("shop/api", &[("token", SECOND)]).await;
    coffer_tests::eventually(Duration::from_secs(15), "the rotated token in use", || {
        let (status, _) = curl(port);
        (status == "200").then_some(())
    });
    let seen = server.requests();
    assert!(
        seen.iter()
            .any(|s| s.authorization.as_deref() == Some(&format!("Bearer {SECOND}"))),
        "the upstream never saw the rotated token"
    );
    let log = sidecar.process.output();
    for token in [FIRST, SECOND] {
        assert!(!log.contains(token), "a token appears in the sidecar's log");
    }
}
