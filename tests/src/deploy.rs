//! The shipped manifests (deploy/): render them with `kubectl kustomize`,
//! and find the pinned validators `scripts/install-test-deps` installs into
//! `.venv/` (kubernetes-validate, checkov). Used by `tests/deploy_*.rs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// Every kustomization a user applies, relative to deploy/.
pub const KUSTOMIZATIONS: &[&str] = &[
    "overlays/vault",
    "overlays/tokenreview",
    "overlays/dev",
    "example/native",
    "example/init-mode",
];

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.32.0";

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A tool installed in `.venv/bin` by `scripts/install-test-deps`; panics
/// with instructions when it is missing (never skips).
pub fn venv_tool(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.venv/bin")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-test-deps",
        path.display()
    );
    path
}

/// `kubectl kustomize deploy/<kustomization>` as YAML text.
pub fn render(kustomization: &str) -> String {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir().join(kustomization))
        .output()
        .expect("kubectl is needed to render deploy/ (kubectl kustomize)");
    assert!(
        output.status.success(),
        "kubectl kustomize {kustomization} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered objects of `kustomization`, as JSON values.
pub fn objects(kustomization: &str) -> Vec<Value> {
    parse_yaml_stream(&render(kustomization))
}

/// Every document of a multi-document YAML stream.
pub fn parse_yaml_stream(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The object of `kind` named `name`.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the rendered manifests"))
}

/// One HTTPS request to `addr` (`127.0.0.1:PORT`), verifying the server as
/// `localhost` against `ca_pem`. Returns the status and the body.
pub fn https_request(
    addr: &str,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    use std::io::{Read, Write};

    use rustls_pki_types::{CertificateDer, pem::PemObject};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().ok()?)
            .ok()?;
    let tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    stream.flush().ok()?;
    let mut response = Vec::new();
    // A peer that closes without close_notify still gave us the response.
    let _ = stream.read_to_end(&mut response);
    crate::http::parse_response(&String::from_utf8_lossy(&response))
}

/// Validates a manifest file strictly against [`KUBERNETES_VERSION`];
/// panics with the validator's report otherwise.
pub fn kubernetes_validate(file: &Path) {
    let output = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Scans a manifest file with checkov (framework kubernetes, offline);
/// returns its JSON report.
pub fn checkov(file: &Path) -> Value {
    let output = Command::new(venv_tool("checkov"))
        .args(["--framework", "kubernetes", "--output", "json", "--quiet"])
        .args(["--compact", "--skip-download", "--file"])
        .arg(file)
        // checkov writes caches where it runs.
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
