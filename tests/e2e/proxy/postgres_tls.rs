//! TLS to the upstream: with the cluster's CA the proxy's session is
//! encrypted (`pg_stat_ssl`); with another CA the proxy refuses to go on,
//! the app gets coffer's FATAL, and nothing of the credential was sent.

use coffer_tests::{free_port, postgres::ROOT_PASSWORD};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_postgres::{NoTls, error::SqlState};

use super::{assert_nowhere, put_credential, setup, start_proxies};

const CANARY: &str = "canary-tls-pw-81f0e2";

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_leg_is_tls_verified_against_the_configured_ca() {
    let s = setup("30s", "120s", "5s");
    s.pg.psql(
        "postgres",
        ROOT_PASSWORD,
        &format!("CREATE ROLE app_tls LOGIN PASSWORD '{CANARY}'"),
    )
    .unwrap();
    put_credential(&s.bao, "shop/pgtls", "app_tls", CANARY);
    let broker = s.broker();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let other_ca_file = s.pg.dir().join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca.pem()).unwrap();
    let (good, wrong) = (free_port(), free_port());
    let entry = |name: &str, port: u16, ca: &std::path::Path| {
        format!(
            "  - {{name: {name}, protocol: postgres, listen: 127.0.0.1:{port}, upstream: 127.0.0.1:{}, path: shop/pgtls, tls: {{caFile: {}, serverName: localhost}}}}\n",
            s.pg.port,
            ca.display()
        )
    };
    let sidecar = start_proxies(
        &broker,
        &(entry("good-ca", good, &s.pg.ca_file()) + &entry("wrong-ca", wrong, &other_ca_file)),
    );

    let conninfo = |port: u16| format!("host=127.0.0.1 port={port} user=app dbname=postgres");
    let (client, connection) = tokio_postgres::connect(&conninfo(good), NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app_tls");
    assert!(row.get::<_, bool>(1), "the upstream session is not TLS");

    let error = tokio_postgres::connect(&conninfo(wrong), NoTls)
        .await
        .err()
        .expect("a server the CA does not vouch for is refused");
    let db = error
        .as_db_error()
        .expect("an ErrorResponse from the proxy");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE);
    assert_eq!(
        db.message(),
        "coffer: TLS with the upstream of proxy wrong-ca failed (see the sidecar's log)"
    );
    // The one successful login is the good proxy's: the wrong-CA proxy
    // never got as far as a startup message.
    let logins =
        s.pg.psql(
            "postgres",
            ROOT_PASSWORD,
            "select count(*) from pg_stat_activity where usename = 'app_tls'",
        )
        .unwrap();
    assert_eq!(logins.trim(), "1");
    let log = sidecar.process.output();
    assert!(log.contains("TLS with the upstream failed"), "{log}");
    assert_nowhere(
        CANARY,
        &[
            ("sidecar log", &log),
            ("broker log", &broker.process.output()),
        ],
    );
}
