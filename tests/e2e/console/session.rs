//! The console's cookie is a session of its own, not the access token: the
//! token in the printed URL is traded for a random session value the
//! console keeps, so the cookie never carries the token, and a cookie the
//! console did not hand out (the token itself, a guess, an edited session)
//! opens nothing.

use coffer_tests::{
    BrokerProcess,
    browser::http_exchange,
    console::{Console, admin_policy},
};

/// Every `len`-character window of `text`.
fn windows(text: &str, len: usize) -> impl Iterator<Item = &str> {
    (0..=text.len().saturating_sub(len)).map(move |at| &text[at..at + len])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_session_cookie_carries_no_part_of_the_access_token() {
    let broker = BrokerProcess::builder().policy(&admin_policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let console = Console::start(&broker, ("ops", "admin"));

    let set_cookie = &console.set_cookie;
    assert!(
        set_cookie.contains("httponly") && set_cookie.contains("samesite=strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(&console.token), "{set_cookie}");
    // Not even a piece of it: 8 hex characters are 32 bits, which a random
    // session matches by chance about once in 70 million runs.
    for piece in windows(&console.token, 8) {
        assert!(
            !set_cookie.contains(piece),
            "the cookie holds {piece:?} of the token: {set_cookie}"
        );
    }
    let (code, list) = console.get("/api/secrets");
    assert_eq!(code, 200, "the session opens the console: {list}");
    assert!(list.contains("\"shop/db\""), "{list}");

    // A second trade is a second session; both work.
    let (code, head, _) = http_exchange(
        &console.addr,
        "GET",
        &format!("/?token={}", console.token),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(code, 303, "{head}");
    let second = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(second, console.cookie(), "a fresh session value");
    assert_eq!(console.get_with_cookie("/", &second).0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_the_console_did_not_hand_out_is_refused() {
    let broker = BrokerProcess::builder().policy(&admin_policy()).start();
    broker.put_map("shop/db", &[("password", "first")]).await;
    let console = Console::start(&broker, ("ops", "admin"));
    let name = console.cookie_name().to_string();
    let session = console.cookie();
    let value = session.split_once('=').unwrap().1;
    let edited = format!(
        "{}{}",
        &value[..value.len() - 1],
        if value.ends_with('0') { '1' } else { '0' }
    );
    let forged = [
        ("the access token as the cookie", console.token.clone()),
        ("an edited session", edited),
        ("a made-up session", "ab".repeat(32)),
        ("an empty session", String::new()),
        ("the session cut short", value[..32].to_string()),
    ];
    for (what, value) in &forged {
        let cookie = format!("{name}={value}");
        for path in ["/", "/api/secrets", "/secret/shop/db"] {
            let (code, body) = console.get_with_cookie(path, &cookie);
            assert_eq!(code, 401, "{what} opens {path}: {body}");
            assert!(!body.contains("shop"), "{what}: {body}");
        }
    }
    // The session the console handed out still works after those attempts.
    assert_eq!(console.get("/api/secrets").0, 200);
}
