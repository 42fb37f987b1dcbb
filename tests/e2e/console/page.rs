//! `cofferctl console` against a real broker on the dev store and real
//! sidecars, driven in headless Chromium: a rotate clicked in the page rolls
//! out to 3/3, a sidecar on a full tmpfs shows as failed with its reason, a
//! rollback from the page restores the old files, a denied action shows the
//! broker's denial; and over plain HTTP: no access token, no CSRF token or
//! another origin are refused, and no page or JSON answer carries a value.

use std::{path::PathBuf, process::Command, time::Duration};

use coffer_tests::{
    BrokerProcess, Key, SidecarProcess, TinyTmpfs, binary,
    browser::{Browser, http_exchange},
    console::Console,
    eventually, mint, password_of, password_sidecar,
    policy::ADMIN,
    policy_with, rule,
};

/// The shared policy, and what these tests add to it.
fn policy() -> String {
    policy_with(&[
        rule("admin-lists-shop", "ops/admin", &["shop"], ADMIN),
        rule(
            "viewer-looks",
            "ops/viewer",
            &["shop", "shop/*"],
            &["read", "list", "status"],
        ),
    ])
}

const CANARY: &str = "canary-console-7f3a9c";

/// A broker with shop/db = {password: first} watched by `pods` sidecars.
async fn broker_with_pods(pods: &[&str]) -> (BrokerProcess, Vec<SidecarProcess>) {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let pods: Vec<SidecarProcess> = pods
        .iter()
        .map(|p| password_sidecar(&broker, p, None))
        .collect();
    for pod in &pods {
        eventually(Duration::from_secs(20), "the first file", || {
            (password_of(pod) == "first").then_some(())
        });
    }
    (broker, pods)
}

/// Where the rollout screenshot goes: `target/`, so a test run leaves the
/// work tree clean; `COFFER_UPDATE_SCREENSHOTS=1` also refreshes the copy
/// docs/console.md shows.
fn screenshot_paths() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut paths = vec![root.join("target/console-rollout.png")];
    if std::env::var_os("COFFER_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        paths.push(root.join("docs/console-rollout.png"));
    }
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_clicked_in_the_page_rolls_out_to_three_of_three() {
    let (broker, pods) = broker_with_pods(&["web-a", "web-b", "web-c"]).await;
    let console = Console::start(&broker, ("ops", "admin"));
    let browser = Browser::start();
    browser.goto(&console.url);
    browser.wait_for_text("#secrets", "shop/db", Duration::from_secs(10));
    browser.click("a[href='/secret/shop/db']");
    browser.wait_for_text("#rollout-text", "3/3 applied", Duration::from_secs(20));
    assert_eq!(browser.text("#rollout-version"), "v1");

    browser.click("#rotate");
    let question = browser.accept_dialog();
    assert!(question.contains("Rotate shop/db"), "{question}");
    browser.wait_for_text("#message", "now version 2", Duration::from_secs(20));
    browser.wait_for_text("#rollout-version", "v2", Duration::from_secs(20));
    let text = browser.wait_for_text("#rollout-text", "3/3 applied", Duration::from_secs(30));
    assert!(text.contains("0 failed, 0 pending"), "{text}");
    let applied = browser.text("#applied");
    for pod in ["web-a", "web-b", "web-c"] {
        assert!(applied.contains(&format!("pod={pod} in ")), "{applied}");
    }
    let rotated = password_of(&pods[0]);
    assert_eq!(rotated.len(), 32, "the files hold the new value");
    for pod in &pods {
        assert_eq!(password_of(pod), rotated);
    }
    let png = browser.screenshot();
    for path in screenshot_paths() {
        std::fs::write(path, &png).unwrap();
    }
    let dom = browser.dom();
    assert!(!dom.contains(&rotated), "the page never shows the value");
    assert!(!console.process.output().contains(&rotated));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_on_a_full_tmpfs_shows_failed_with_its_reason() {
    let tmpfs = TinyTmpfs::mount("64k");
    let (broker, mut pods) = broker_with_pods(&["web-ok"]).await;
    let full = password_sidecar(&broker, "web-full", Some(tmpfs.path()));
    eventually(Duration::from_secs(20), "the first file", || {
        (password_of(&full) == "first").then_some(())
    });
    tmpfs.fill();
    let console = Console::start(&broker, ("ops", "admin"));
    let browser = Browser::start();
    browser.goto(&console.url);
    browser.goto(&format!("http://{}/secret/shop/db", console.addr));
    browser.wait_for_text("#rollout-text", "2/2 applied", Duration::from_secs(20));

    browser.click("#rotate");
    browser.accept_dialog();
    let text = browser.wait_for_text("#rollout-text", "1 failed", Duration::from_secs(30));
    assert!(text.contains("1/2 applied"), "{text}");
    let failed = browser.wait_for_text("#failed", "pod=web-full", Duration::from_secs(5));
    assert!(
        failed.contains("no storage space"),
        "the reason is shown: {failed}"
    );
    assert!(browser.text("#applied").contains("pod=web-ok"));
    assert_eq!(password_of(&full), "first", "the last good file stays");
    drop(full);
    pods.clear();
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_from_the_page_restores_the_old_version_in_the_files() {
    let (broker, pods) = broker_with_pods(&["web-a", "web-b", "web-c"]).await;
    broker.put_map("shop/db", &[("password", "second")]).await;
    for pod in &pods {
        eventually(Duration::from_secs(20), "the second file", || {
            (password_of(pod) == "second").then_some(())
        });
    }
    let console = Console::start(&broker, ("ops", "admin"));
    let browser = Browser::start();
    browser.goto(&console.url);
    browser.goto(&format!("http://{}/secret/shop/db", console.addr));
    browser.wait_for_text("#rollout-text", "3/3 applied", Duration::from_secs(20));
    browser.click("button[data-rollback='1']");
    let question = browser.accept_dialog();
    assert!(question.contains("back to version 1"), "{question}");
    browser.wait_for_text("#message", "now version 3", Duration::from_secs(20));
    for pod in &pods {
        eventually(Duration::from_secs(20), "the rolled-back file", || {
            (password_of(pod) == "first").then_some(())
        });
    }
    browser.wait_for_text("#rollout-version", "v3", Duration::from_secs(20));
    browser.wait_for_text("#rollout-text", "3/3 applied", Duration::from_secs(30));
    browser.wait_for_text("#versions", "v3 (current)", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_rotate_shows_the_brokers_denial() {
    let (broker, pods) = broker_with_pods(&["web-a"]).await;
    let console = Console::start(&broker, ("ops", "viewer"));
    let browser = Browser::start();
    browser.goto(&console.url);
    browser.goto(&format!("http://{}/secret/shop/db", console.addr));
    browser.wait_for_text("#rollout-text", "1/1 applied", Duration::from_secs(20));
    browser.click("#rotate");
    browser.accept_dialog();
    let message = browser.wait_for_text("#message", "refused", Duration::from_secs(20));
    assert!(message.contains("PermissionDenied"), "{message}");
    assert_eq!(password_of(&pods[0]), "first", "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_access_token_are_refused() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let console = Console::start(&broker, ("ops", "admin"));
    for path in [
        "/",
        "/api/secrets",
        "/secret/shop/db",
        "/api/secret/shop/db",
        "/assets/console.js",
    ] {
        let (code, _, body) = http_exchange(&console.addr, "GET", path, &[], b"").unwrap();
        assert_eq!(code, 401, "{path}");
        assert!(
            !String::from_utf8_lossy(&body).contains("shop/db"),
            "{path}"
        );
        let session = console.cookie();
        let value = session.split_once('=').unwrap().1;
        let flipped = if value.starts_with('0') { '1' } else { '0' };
        let wrong = format!("{}={flipped}{}", console.cookie_name(), &value[1..]);
        let (code, _, _) =
            http_exchange(&console.addr, "GET", path, &[("Cookie", &wrong)], b"").unwrap();
        assert_eq!(code, 401, "a wrong session: {path}");
    }
    let (code, _, _) = http_exchange(&console.addr, "GET", "/?token=00", &[], b"").unwrap();
    assert_eq!(code, 401);
    // The right token is traded for a cookie and dropped from the URL.
    let (code, head, _) = http_exchange(
        &console.addr,
        "GET",
        &format!("/?token={}", console.token),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("location: /\r\n"), "{head}");
    assert!(
        head.contains("httponly") && head.contains("samesite=strict"),
        "{head}"
    );
    assert_eq!(console.get("/").0, 200);
    // The trade redirects to this console only, never to another site.
    let (code, head, _) = http_exchange(
        &console.addr,
        "GET",
        &format!("//evil.example/?token={}", console.token),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 303, "{head}");
    assert!(head.contains("location: /\r\n"), "{head}");
    // Another Host (DNS rebinding) is refused even with the token.
    let (code, _, _) = http_exchange(
        &console.addr,
        "GET",
        "/",
        &[("Host", "evil.example:80"), ("Cookie", &console.cookie())],
        b"",
    )
    .unwrap();
    assert_eq!(code, 421);
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_without_the_csrf_token_or_from_another_origin_are_refused() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let console = Console::start(&broker, ("ops", "admin"));
    let csrf = console.csrf("shop/db");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "no CSRF header"),
        (&[("X-Coffer-CSRF", "0000")], "a wrong CSRF token"),
        (
            &[("X-Coffer-CSRF", &csrf), ("Origin", "http://evil.example")],
            "another origin",
        ),
        (&[("X-Coffer-CSRF", &csrf), ("Origin", "")], "no Origin"),
    ];
    for (headers, what) in cases {
        let (code, body) = console.post("/api/rotate/shop/db", "{}", headers);
        assert_eq!(code, 403, "{what}: {body}");
        let (code, body) = console.post("/api/rollback/shop/db", r#"{"toVersion":1}"#, headers);
        assert_eq!(code, 403, "{what}: {body}");
    }
    let (_, status) = console.get("/api/secret/shop/db");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["currentVersion"], 1, "nothing was rotated");
    // The same request with the token and the right origin acts.
    let (code, body) = console.post("/api/rotate/shop/db", "{}", &[("X-Coffer-CSRF", &csrf)]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\":2"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_forbids_caching_and_inline_scripts() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let console = Console::start(&broker, ("ops", "admin"));
    for path in [
        "/",
        "/secret/shop/db",
        "/api/secrets",
        "/assets/console.js",
        "/nope",
    ] {
        let (_, head, _) = http_exchange(
            &console.addr,
            "GET",
            path,
            &[("Cookie", &console.cookie())],
            b"",
        )
        .unwrap();
        assert!(head.contains("cache-control: no-store"), "{path}: {head}");
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("content-security-policy: "))
            .unwrap_or_else(|| panic!("{path}: no CSP: {head}"));
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    let (_, html) = console.get("/secret/shop/db");
    assert!(!html.contains("<script>"), "no inline script");
    assert!(html.contains("<script src=\"/assets/console.js\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_page_or_json_answer_carries_a_secret_value() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", CANARY)]).await;
    broker.put_bytes("shop/raw", CANARY.as_bytes()).await;
    let console = Console::start(&broker, ("ops", "admin"));
    let mut seen = String::new();
    for path in [
        "/",
        "/api/secrets",
        "/secret/shop/db",
        "/api/secret/shop/db",
        "/secret/shop/raw",
        "/api/secret/shop/raw",
        "/secret/shop/db%23password",
        "/api/secret/shop/db#password",
    ] {
        let (code, body) = console.get(path);
        assert!(!body.contains(CANARY), "{path} ({code}) shows the value");
        seen.push_str(&body);
    }
    // Real answers, not errors: the listing names both secrets.
    let list: serde_json::Value = serde_json::from_str(&console.get("/api/secrets").1).unwrap();
    let names: Vec<&str> = list["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["shop/db", "shop/raw"], "{list}");
    assert!(seen.contains("\"currentVersion\":1"));
    // A rotation's generated value is not in the answer either.
    let csrf = console.csrf("shop/db");
    let (code, body) = console.post("/api/rotate/shop/raw", "{}", &[("X-Coffer-CSRF", &csrf)]);
    assert_eq!(code, 200, "{body}");
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let rotated = admin.get("shop/raw").await.unwrap();
    let rotated = String::from_utf8(rotated.expose_bytes().unwrap().to_vec()).unwrap();
    assert!(!body.contains(&rotated));
    for path in ["/api/secrets", "/api/secret/shop/raw", "/secret/shop/raw"] {
        assert!(!console.get(path).1.contains(&rotated), "{path}");
    }
    let output = console.process.output();
    assert!(
        !output.contains(CANARY) && !output.contains(&rotated),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wildcard_listen_address_is_refused() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, mint(Key::Rsa, "ops", "admin")).unwrap();
    let output = Command::new(binary("cofferctl"))
        .arg("console")
        .arg("--broker")
        .arg(&broker.endpoint)
        .arg("--token-file")
        .arg(&token_file)
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("not a wildcard"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_overview_lists_version_age_and_rotation_spec() {
    let broker = BrokerProcess::builder().policy(&policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let admin = broker.client(mint(Key::Rsa, "ops", "admin")).await;
    let rotate = coffer::operator::Rotate::new("shop/db").length(40);
    assert_eq!(admin.rotate(rotate).await.unwrap(), 2);
    let console = Console::start(&broker, ("ops", "admin"));
    let (code, list) = console.get("/api/secrets");
    assert_eq!(code, 200, "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let row = &list["secrets"][0];
    assert_eq!(row["path"], "shop/db", "{list}");
    assert_eq!(row["currentVersion"], 2, "{list}");
    assert!(row["age"].as_str().unwrap().ends_with(" ago"), "{list}");
    assert!(
        row["spec"].as_str().unwrap().contains("length=40"),
        "{list}"
    );
    let (_, html) = console.get("/");
    assert!(html.contains("length=40") && html.contains("v2"), "{html}");
}
