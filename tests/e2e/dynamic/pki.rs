//! Certificates from OpenBao's PKI engine end to end: the identity is the
//! verified token's (a SPIFFE URI SAN) plus the configured DNS names; the
//! sidecar writes tls.crt, tls.key and ca.crt together; a new certificate
//! arrives before the old one expires (docs/dynamic.md).

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use coffer_tests::{
    BrokerProcess, SidecarProcess, eventually,
    openbao::{OpenBao, ROOT_TOKEN},
    pod_token,
};

fn pki_broker(bao: &OpenBao, ttl: &str) -> BrokerProcess {
    bao.enable_pki("spiffe://cluster.local/*");
    let token = bao.file("root-token", ROOT_TOKEN);
    let config = bao.file(
        "vault.yaml",
        &format!(
            "address: {}\nauth: {{method: token, tokenFile: {}}}\nmounts:\n  - {{prefix: shop, mount: secret}}\n  - {{prefix: shop/tls, mount: pki, type: pki, role: web, trustDomain: cluster.local, dnsNames: [web.shop.svc], ttl: {ttl}, grace: 2s}}\n",
            bao.addr,
            token.display()
        ),
    );
    let config = config.display().to_string();
    BrokerProcess::builder()
        .args(["--store=vault", "--vault-config", &config])
        .start()
}

fn tls_sidecar(broker: &BrokerProcess) -> SidecarProcess {
    let sidecar = SidecarProcess::start(
        broker,
        &pod_token("web-a"),
        "  - {path: shop/tls#tls.crt, file: tls.crt}\n  - {path: shop/tls#tls.key, file: tls.key}\n  - {path: shop/tls#ca.crt, file: ca.crt}\n",
        &[],
    );
    sidecar.wait_for_files(&["tls.crt", "tls.key", "ca.crt"], Duration::from_secs(30));
    sidecar
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serial(sidecar: &SidecarProcess) -> String {
    let cert = sidecar.file("tls.crt").display().to_string();
    openssl(&["x509", "-in", &cert, "-noout", "-serial"])
}

/// The three files belong together: the key is the certificate's and the
/// CA signed it.
fn assert_consistent(sidecar: &SidecarProcess) {
    let (cert, key, ca) = (
        sidecar.file("tls.crt").display().to_string(),
        sidecar.file("tls.key").display().to_string(),
        sidecar.file("ca.crt").display().to_string(),
    );
    assert_eq!(
        openssl(&["x509", "-in", &cert, "-noout", "-pubkey"]),
        openssl(&["pkey", "-in", &key, "-pubout"]),
        "tls.key is the key of tls.crt"
    );
    assert!(openssl(&["verify", "-CAfile", &ca, &cert]).contains("OK"));
}

#[test]
fn a_certificate_carries_exactly_the_token_identity_and_the_configured_names() {
    let bao = OpenBao::start();
    let broker = pki_broker(&bao, "1h");
    let sidecar = tls_sidecar(&broker);
    let cert = sidecar.file("tls.crt").display().to_string();
    let sans = openssl(&["x509", "-in", &cert, "-noout", "-ext", "subjectAltName"]);
    let names: Vec<&str> = sans
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        names,
        [
            "DNS:web.shop.svc",
            "URI:spiffe://cluster.local/ns/shop/sa/web"
        ],
        "{sans}"
    );
    assert_consistent(&sidecar);
    let mode = std::fs::metadata(sidecar.file("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400, "tls.key is 0400");

    // The private key never reaches a log.
    let key = std::fs::read_to_string(sidecar.file("tls.key")).unwrap();
    let body: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect();
    assert!(!body.is_empty());
    for (name, output) in [
        ("broker", broker.process.output()),
        ("sidecar", sidecar.process.output()),
    ] {
        for line in &body {
            assert!(
                !output.contains(line),
                "the private key appears in the {name} log"
            );
        }
    }
    // Certificates hold no Vault lease, so a restart leaves none behind.
    let (_, leases, _) = bao.try_bao(
        &["list", "-format=json", "sys/leases/lookup/pki/issue/web"],
        "",
    );
    assert!(!leases.contains("pki"), "no leases: {leases}");
}

#[test]
fn a_new_certificate_arrives_before_the_old_one_expires() {
    let bao = OpenBao::start();
    let broker = pki_broker(&bao, "6s");
    let sidecar = tls_sidecar(&broker);
    let first = serial(&sidecar);
    let cert = sidecar.file("tls.crt").display().to_string();
    // Still valid 2 s from now, and replaced within its 6 s lifetime.
    openssl(&["x509", "-in", &cert, "-noout", "-checkend", "2"]);
    eventually(Duration::from_secs(6), "a renewed certificate", || {
        (serial(&sidecar) != first).then_some(())
    });
    assert_consistent(&sidecar);
}
