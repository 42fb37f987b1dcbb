//! The injector's serving certificate follows its files (issue #22):
//! cert-manager renews them in place, the injector checks them every
//! `--tls-reload-interval`, new connections get the new certificate, and a
//! connection the API server keeps alive goes on with the old one.

use std::time::Duration;

use coffer_tests::eventually;

use crate::injector::common as injector_common;

use injector_common::{Connection, Injector};

#[test]
fn a_renewed_certificate_reaches_new_connections_while_open_ones_go_on() {
    let injector = Injector::start_with(&["--tls-reload-interval=200ms"]);
    let mut kept = Connection::open(&injector.addr, &injector.ca);
    let first = kept.peer_certificate();
    assert_eq!(kept.request("GET", "/healthz", b"").unwrap().0, 200);

    let renewed = injector.renew_certificate();
    assert_ne!(renewed, first);
    eventually(
        Duration::from_secs(10),
        "a new connection to get the renewed certificate",
        || {
            (Connection::open(&injector.addr, &injector.ca).peer_certificate() == renewed)
                .then_some(())
        },
    );
    // The connection opened before the renewal still serves.
    assert_eq!(kept.request("GET", "/healthz", b"").unwrap().0, 200);
    assert_eq!(kept.peer_certificate(), first);
    assert!(
        injector.output().contains("reloaded the TLS certificate"),
        "{}",
        injector.output()
    );
}

#[test]
fn a_broken_renewal_keeps_the_last_good_certificate() {
    let injector = Injector::start_with(&["--tls-reload-interval=200ms"]);
    let first = Connection::open(&injector.addr, &injector.ca).peer_certificate();
    injector.write_certificate_file("not a certificate");
    eventually(Duration::from_secs(10), "the refusal to be logged", || {
        injector
            .output()
            .contains("TLS certificate not reloaded")
            .then_some(())
    });
    let mut connection = Connection::open(&injector.addr, &injector.ca);
    assert_eq!(connection.peer_certificate(), first);
    assert_eq!(connection.request("GET", "/healthz", b"").unwrap().0, 200);
}
