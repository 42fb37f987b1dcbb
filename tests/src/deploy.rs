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
