//! Cancel requests through the proxy (a real client, `tokio-postgres`'s
//! `CancelToken`): one for a session the proxy opened reaches its backend
//! and the query ends with SQLSTATE 57014; one naming a backend the proxy
//! did not open (here a direct session's own, valid key) is not forwarded.

use std::time::Duration;

use coffer_tests::postgres::{Postgres, ROOT_PASSWORD};
use tokio_postgres::{Client, NoTls, error::SqlState};

use super::{put_credential, setup, start_proxy};

/// Generous: the query sleeps 30 s, a forwarded cancel ends it at once.
const ENDS_WITHIN: Duration = Duration::from_secs(20);

async fn connect(conninfo: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Waits until `pg` shows a `pg_sleep` running as `user`.
fn wait_until_sleeping(pg: &Postgres, user: &str) {
    let sql = format!(
        "select count(*) from pg_stat_activity where usename = '{user}' and state = 'active' and query like 'select pg_sleep%'"
    );
    for _ in 0..100 {
        if pg.psql("postgres", ROOT_PASSWORD, &sql).unwrap().trim() == "1" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the query never started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_through_the_proxy_ends_the_query_with_57014() {
    let s = setup("30s", "120s", "5s");
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        "CREATE ROLE app_cancel LOGIN PASSWORD 'cancel-pw-1'",
    )
    .unwrap();
    put_credential(&s.bao, "shop/pgcancel", "app_cancel", "cancel-pw-1");
    let broker = s.broker();
    let (sidecar, port) = start_proxy(&broker, &s.pg, "shop/pgcancel");
    let client = connect(&format!(
        "host=127.0.0.1 port={port} user=app dbname=postgres"
    ))
    .await;
    let token = client.cancel_token();
    let query = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::task::block_in_place(|| wait_until_sleeping(&s.pg, "app_cancel"));

    // To the proxy's address, the key the proxy passed on.
    token.cancel_query(NoTls).await.unwrap();
    let ended = tokio::time::timeout(ENDS_WITHIN, query)
        .await
        .expect("the cancel reached the backend")
        .unwrap();
    let error = ended.expect_err("the query was cancelled");
    assert_eq!(error.code(), Some(&SqlState::QUERY_CANCELED), "{error}");
    let log = sidecar.process.output();
    assert!(!log.contains("did not open"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_for_a_backend_the_proxy_did_not_open_is_not_forwarded() {
    let s = setup("30s", "120s", "5s");
    put_credential(&s.bao, "shop/pgroot", "postgres", ROOT_PASSWORD);
    let broker = s.broker();
    let (sidecar, port) = start_proxy(&broker, &s.pg, "shop/pgroot");
    // A session straight to the server: its key is valid there, but the
    // proxy never saw it.
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=postgres password={ROOT_PASSWORD} dbname=postgres",
        s.pg.port
    ))
    .await;
    let token = direct.cancel_token();
    let query = tokio::spawn(async move { direct.simple_query("select pg_sleep(3)").await });
    tokio::task::block_in_place(|| wait_until_sleeping(&s.pg, "postgres"));

    let to_proxy = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    token.cancel_query_raw(to_proxy, NoTls).await.unwrap();
    let ended = tokio::time::timeout(ENDS_WITHIN, query)
        .await
        .unwrap()
        .unwrap();
    assert!(
        ended.is_ok(),
        "the direct session's query was cancelled: {ended:?}"
    );
    sidecar.wait_for_log(
        "cancel request for a session this proxy did not open: not forwarded",
        Duration::from_secs(5),
    );
}
