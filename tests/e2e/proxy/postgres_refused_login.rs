//! The proxy's credential stops working upstream (its role's password is
//! changed, as a revocation would): the app gets coffer's own FATAL with
//! SQLSTATE 28000, never the server's words about the login, and the
//! upstream auth failure metric counts it.

use coffer_tests::{get_page, postgres::ROOT_PASSWORD};
use tokio_postgres::{NoTls, error::SqlState};

use super::{assert_nowhere, put_credential, setup, start_proxy};

const CANARY: &str = "canary-refused-pw-c4d2a9";

#[tokio::test(flavor = "multi_thread")]
async fn a_login_refused_upstream_is_coffers_fatal_28000_and_is_counted() {
    let s = setup("30s", "120s", "5s");
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        &format!("CREATE ROLE app_refused LOGIN PASSWORD '{CANARY}'"),
    )
    .unwrap();
    put_credential(&s.bao, "shop/pgrefused", "app_refused", CANARY);
    let broker = s.broker();
    let (sidecar, port) = start_proxy(&broker, &s.pg, "shop/pgrefused");
    let conninfo = format!("host=127.0.0.1 port={port} user=app dbname=postgres");
    // It works, until the server stops taking the credential.
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client.query_one("select current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "app_refused");
    drop(client);
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        "ALTER ROLE app_refused PASSWORD 'changed-elsewhere'",
    )
    .unwrap();

    let error = tokio_postgres::connect(&conninfo, NoTls)
        .await
        .err()
        .expect("the login was refused upstream");
    let db = error
        .as_db_error()
        .expect("an ErrorResponse from the proxy");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert_eq!(
        db.message(),
        "coffer: the upstream refused the credential of shop/pgrefused (see the sidecar's log)"
    );
    // Nothing of the server's own message (it names the role) reaches the app.
    assert!(db.detail().is_none() && db.hint().is_none(), "{db:?}");
    assert!(!format!("{db:?}").contains("app_refused"), "{db:?}");

    let metrics = get_page(&sidecar.admin_addr(), "/metrics");
    assert!(
        metrics.contains("coffer_sidecar_proxy_upstream_auth_failures_total{proxy=\"shop-db\"} 1"),
        "{metrics}"
    );
    let log = sidecar.process.output();
    assert!(log.contains("SQLSTATE 28P01"), "{log}");
    assert_nowhere(
        CANARY,
        &[
            ("sidecar log", &log),
            ("broker log", &broker.process.output()),
            ("metrics", &metrics),
        ],
    );
}
