//! Certificates are followed, not read once (issue #22): the broker serves
//! a renewed certificate to new connections while open watch streams go on,
//! and keeps the last good one when the new files do not load; the sidecar
//! trusts a rotated CA bundle from its next connection on, without
//! dropping the stream it has.

use std::{path::Path, sync::Arc, time::Duration};

use coffer::{Client, SecretData, TokenSource, WatchEventKind};
use coffer_tests::{BrokerProcess, Key, SidecarOptions, SidecarProcess, eventually, mint};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};

/// A test CA.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate for `localhost` and 127.0.0.1 with its key.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Replaces `path` atomically, as a Secret volume's update does.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The broker's certificate files.
struct CertFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl CertFiles {
    fn new(leaf: &Leaf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        files.install(leaf);
        files
    }

    /// A renewal: key first, then the certificate (a broker reading in
    /// between sees a pair that does not match, and waits).
    fn install(&self, leaf: &Leaf) {
        replace(&self.key, &leaf.key_pem);
        replace(&self.cert, &leaf.cert_pem);
    }

    fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            "--tls-cert".into(),
            self.cert.clone().into(),
            "--tls-key".into(),
            self.key.clone().into(),
            "--tls-reload-interval".into(),
            "200ms".into(),
        ]
    }
}

fn port(broker: &BrokerProcess) -> u16 {
    broker.endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// The certificate a new TLS connection to the broker is shown.
async fn presented(port: u16, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn tls_client(port: u16, ca_pem: &str, token: String) -> Client {
    Client::builder(format!("https://localhost:{port}"))
        .ca_pem(ca_pem.as_bytes().to_vec())
        .token(TokenSource::from_static(token))
        .connect()
        .await
        .unwrap()
}

async fn put(client: &Client, value: &str) -> u64 {
    client
        .put(
            coffer::operator::Put::new("shop/db", SecretData::Bytes(value.as_bytes().into()))
                .content_type("text/plain"),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_reaches_new_connections_while_open_streams_go_on() {
    let ca = Ca::new("coffer test CA");
    let (a, b) = (ca.leaf(), ca.leaf());
    let files = CertFiles::new(&a);
    let broker = BrokerProcess::builder().args(files.args()).start();
    let port = port(&broker);
    assert_eq!(presented(port, &ca.pem()).await, a.der);

    let admin = tls_client(port, &ca.pem(), mint(Key::Rsa, "ops", "admin")).await;
    put(&admin, "one").await;
    let web = tls_client(port, &ca.pem(), mint(Key::Rsa, "shop", "web")).await;
    // One stream, no reconnect: if its connection dropped, it would end.
    let mut watch = web.watch_connection(["shop/db"]).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.kind, WatchEventKind::Snapshot);

    files.install(&b);
    broker.wait_for_log("reloaded the TLS certificate", 1);
    assert_eq!(
        presented(port, &ca.pem()).await,
        b.der,
        "new connections get B"
    );

    put(&admin, "two").await;
    let update = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("an update in time")
        .expect("the stream went on")
        .expect("not an error");
    assert_eq!(update.kind, WatchEventKind::Update);
    assert_eq!(update.secrets[0].version(), 2);
    let fresh = tls_client(port, &ca.pem(), mint(Key::Rsa, "shop", "web")).await;
    assert_eq!(fresh.get("shop/db").await.unwrap().version(), 2);

    // A broken renewal: the last good certificate stays.
    replace(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n");
    broker.wait_for_log("TLS certificate not reloaded", 1);
    assert_eq!(presented(port, &ca.pem()).await, b.der);
    let fresh = tls_client(port, &ca.pem(), mint(Key::Rsa, "shop", "web")).await;
    assert_eq!(fresh.get("shop/db").await.unwrap().version(), 2);
    assert!(
        !broker
            .process
            .output()
            .contains(b.key_pem.lines().nth(1).unwrap()),
        "the key never reaches the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_trusts_a_rotated_ca_bundle_from_its_next_connection_on() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let (old_leaf, new_leaf) = (old_ca.leaf(), new_ca.leaf());
    let files = CertFiles::new(&old_leaf);
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("store.key"), [7u8; 32]).unwrap();
    let store_args = |files: &CertFiles| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--dev-store-file".into(),
            store.path().join("store.sealed").into(),
            "--dev-store-key-file".into(),
            store.path().join("store.key").into(),
        ];
        args.extend(files.args());
        args
    };
    let args = store_args(&files);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let mut broker = BrokerProcess::builder().args(&args).start();
    let port = port(&broker);
    let admin = tls_client(port, &old_ca.pem(), mint(Key::Rsa, "ops", "admin")).await;
    put(&admin, "one").await;

    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca_dir.path().join("ca.crt");
    replace(&ca_file, &old_ca.pem());
    let global = format!("caFile: {}\n", ca_file.display());
    let sidecar = SidecarProcess::start_with(
        &format!("https://localhost:{port}"),
        &mint(Key::Rsa, "shop", "web"),
        "  - {path: shop/db, file: db}\n",
        SidecarOptions {
            global_yaml: &global,
            ..Default::default()
        },
    );
    let content = |want: &'static str| {
        let file = sidecar.file("db");
        move || (std::fs::read_to_string(&file).ok()? == want).then_some(())
    };
    eventually(Duration::from_secs(30), "the first file", content("one"));

    // The CA rotates: the broker's certificate and the sidecar's bundle.
    files.install(&new_leaf);
    replace(&ca_file, &new_ca.pem());
    broker.wait_for_log("reloaded the TLS certificate", 1);
    let admin = tls_client(port, &new_ca.pem(), mint(Key::Rsa, "ops", "admin")).await;
    put(&admin, "two").await;
    // The open stream (its session made under the old CA) goes on.
    eventually(
        Duration::from_secs(30),
        "the update on the open stream",
        content("two"),
    );

    // The broker is replaced: the sidecar's next connection must trust the
    // new CA.
    broker.process.kill();
    let args = store_args(&files);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let _broker = BrokerProcess::builder()
        .listen(&format!("127.0.0.1:{port}"))
        .args(&args)
        .start();
    let admin = tls_client(port, &new_ca.pem(), mint(Key::Rsa, "ops", "admin")).await;
    put(&admin, "three").await;
    eventually(
        Duration::from_secs(60),
        "the sidecar reconnected under the new CA",
        content("three"),
    );
    assert!(
        sidecar.process.output().contains("reloaded the CA bundle"),
        "{}",
        sidecar.process.output()
    );
}
