//! What the injector tests (and the docs examples) share: the real `coffer-injector` binary
//! started on a loopback port with a certificate of its own, AdmissionReview
//! v1 requests as the API server sends them, HTTPS connections that stay
//! open, and the process's memory from `/proc`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use coffer_tests::{deploy::https_request, eventually};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};

/// The uid every review carries (the response must echo it).
pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// A running injector; killed on drop.
pub struct Injector {
    child: Child,
    log: PathBuf,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The CA (PEM) that signed its `localhost` certificate.
    pub ca: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl Injector {
    /// Started with the required flags only.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Started with `args` after the required ones.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();
        let addr_file = dir.path().join("addr");
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut child = Command::new(coffer_tests::binary("coffer-injector"))
            .arg("--listen=127.0.0.1:0")
            .arg(format!(
                "--tls-cert={}",
                dir.path().join("tls.crt").display()
            ))
            .arg(format!(
                "--tls-key={}",
                dir.path().join("tls.key").display()
            ))
            .arg("--sidecar-image=coffer/sidecar:0.1.0")
            .args(args)
            .env("COFFER_ADDR_FILE", &addr_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        let addr = eventually(Duration::from_secs(20), "the injector to listen", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the injector exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&addr_file).ok()
        });
        Self {
            child,
            log,
            addr,
            ca: ca.pem(),
            issuer: ca,
            dir,
        }
    }

    /// Overwrites its certificate file with `text` (a broken renewal).
    pub fn write_certificate_file(&self, text: &str) {
        std::fs::write(self.dir.path().join("tls.crt"), text).unwrap();
    }

    /// Replaces its certificate and key files with a new pair from the
    /// same CA, as cert-manager renews them; the new certificate (DER).
    pub fn renew_certificate(&self) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        // Written beside, then renamed: a reader never sees half a file.
        for (name, text) in [("tls.key", key.serialize_pem()), ("tls.crt", cert.pem())] {
            let tmp = self.dir.path().join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
        }
        cert.der().to_vec()
    }

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmHWM`: peak resident
    /// memory; `VmRSS`: resident now).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.child.id()))
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// One request on a fresh connection (`Connection: close`).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
        https_request(&self.addr, &self.ca, method, path, body)
    }

    /// Sends `review` to `/mutate`; returns its `response`, checked to be an
    /// AdmissionReview answering [`UID`].
    pub fn send(&self, review: &Value) -> Value {
        let (status, body) = self
            .request("POST", "/mutate", review.to_string().as_bytes())
            .expect("the injector answers");
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], UID);
        answer["response"].clone()
    }

    /// A CREATE of `pod` in namespace `shop`.
    pub fn create(&self, pod: &Value) -> Value {
        self.send(&review("CREATE", "shop", Some(pod), None, None))
    }

    /// An UPDATE of `old` to `new` in namespace `shop`.
    pub fn update(&self, old: &Value, new: &Value) -> Value {
        self.send(&review("UPDATE", "shop", Some(new), Some(old), None))
    }

    /// The pod as stored after a CREATE: `pod` with the injector's patch.
    pub fn injected(&self, pod: &Value) -> Value {
        apply(pod.clone(), &self.create(pod))
    }

    /// A TLS connection that stays open for several requests.
    pub fn connect(&self) -> Connection {
        Connection::open(&self.addr, &self.ca)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An AdmissionReview v1 request as the API server sends it.
pub fn review(
    operation: &str,
    namespace: &str,
    object: Option<&Value>,
    old_object: Option<&Value>,
    sub_resource: Option<&str>,
) -> Value {
    let mut request = json!({
        "uid": UID,
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": object,
        "oldObject": old_object,
        "dryRun": false,
        "options": {
            "apiVersion": "meta.k8s.io/v1",
            "kind": if operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" },
        },
    });
    if let Some(sub_resource) = sub_resource {
        request["subResource"] = json!(sub_resource);
        request["requestSubResource"] = json!(sub_resource);
    }
    if let Some(name) = object.and_then(|o| o["metadata"]["name"].as_str()) {
        request["name"] = json!(name);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// A hardened pod as a ReplicaSet would create it (uid 10001), opted in,
/// with `annotations`.
pub fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-6b7f9c-x2x7q",
            "namespace": "shop",
            "labels": {"app": "web", "coffer.dev/inject": "true"},
            "annotations": annotations,
        },
        "spec": {
            "serviceAccountName": "web",
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 10001,
                "runAsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "web",
                "image": "example/web:1.0",
                "imagePullPolicy": "Always",
                "ports": [{"name": "http", "containerPort": 8080}],
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 10001,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                },
            }],
        },
    })
}

/// [`pod`] asking for the password of `shop/db` in the file `db-password`.
pub fn opted_in() -> Value {
    pod(json!({
        "coffer.dev/secret-db": "shop/db#password",
        "coffer.dev/file-db": "db-password",
    }))
}

/// The refusal's message; panics when the response allows the pod.
pub fn refusal(response: &Value) -> String {
    assert_eq!(
        response["allowed"],
        false,
        "not refused: {}",
        short(response)
    );
    response["status"]["message"].as_str().unwrap().to_string()
}

/// `value` as JSON, cut to its first 600 characters (a patch can be long).
pub fn short(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(600) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// Applies the JSONPatch `add` operations of an admission `response`.
pub fn apply(mut doc: Value, response: &Value) -> Value {
    assert_eq!(response["allowed"], true, "{}", short(response));
    assert_eq!(response["patchType"], "JSONPatch", "{}", short(response));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let ops: Vec<Value> = serde_json::from_slice(&bytes).unwrap();
    for op in ops {
        assert_eq!(op["op"], "add", "{op}");
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let last = last.replace("~1", "/").replace("~0", "~");
        match doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent}"))
        {
            Value::Object(map) => {
                map.insert(last, op["value"].clone());
            }
            Value::Array(items) if last == "-" => items.push(op["value"].clone()),
            Value::Array(items) => items.insert(last.parse().unwrap(), op["value"].clone()),
            other => panic!("cannot add into {other}"),
        }
    }
    doc
}

/// Every container of `pod` (init, app, ephemeral) named `name`.
pub fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| pod["spec"][field].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {pod}"))
}

/// A client configuration trusting `ca_pem`.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// An HTTPS/1.1 connection kept open between requests, as the API server
/// keeps its connections to a webhook.
pub struct Connection {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Connection {
    /// Connects and completes the TLS handshake.
    pub fn open(addr: &str, ca_pem: &str) -> Self {
        let connection =
            rustls::ClientConnection::new(client_config(ca_pem), "localhost".try_into().unwrap())
                .unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A request's head and body go out at once, not 40 ms apart
        // (Nagle's algorithm waiting on a delayed ACK).
        tcp.set_nodelay(true).unwrap();
        let mut stream = rustls::StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        Self { stream }
    }

    /// The certificate the server presented (DER).
    pub fn peer_certificate(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// One request on this connection: the status and the body, or the
    /// error when the server closed it.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        write!(
            self.stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.stream.write_all(body)?;
        self.stream.flush()?;
        self.response()
    }

    /// Sends a request's head alone, with `headers` (each ending in CRLF),
    /// and no body: the answer the server gives without it.
    pub fn request_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
    ) -> std::io::Result<(u16, String)> {
        write!(
            self.stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}\r\n"
        )?;
        self.stream.flush()?;
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        self.response()
    }

    fn response(&mut self) -> std::io::Result<(u16, String)> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Waits up to `timeout` for the server to close the connection; the
    /// time it took, or `None` when it stayed open.
    pub fn closed_within(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        while start.elapsed() < timeout {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    }
}

/// Waits up to `timeout` for the server to close a plain TCP connection on
/// which nothing was sent; the time it took, or `None` when it stayed open.
pub fn tcp_closed_within(socket: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    while start.elapsed() < timeout {
        match socket.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}
