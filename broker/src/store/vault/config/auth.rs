//! How the broker logs in to Vault.

use std::path::PathBuf;

use serde::Deserialize;

/// The broker's own identity towards Vault.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "camelCase", deny_unknown_fields)]
pub enum AuthConfig {
    /// A token in a file (written by an operator or another agent). Renewed
    /// while renewable; the file is read again when renewal fails.
    #[serde(rename_all = "camelCase")]
    Token { token_file: PathBuf },
    /// AppRole with role_id and secret_id in files.
    #[serde(rename_all = "camelCase")]
    Approle {
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
        #[serde(default = "default_approle_mount")]
        mount: String,
    },
    /// Vault's `kubernetes` auth method with the broker's service-account token.
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        role: String,
        #[serde(default = "default_sa_token")]
        token_file: PathBuf,
        #[serde(default = "default_kubernetes_mount")]
        mount: String,
    },
    /// Vault's `jwt` auth method with the broker's service-account token
    /// (the same login, checked against the cluster's JWKS).
    #[serde(rename_all = "camelCase")]
    Jwt {
        role: String,
        #[serde(default = "default_sa_token")]
        token_file: PathBuf,
        #[serde(default = "default_jwt_mount")]
        mount: String,
    },
}

fn default_approle_mount() -> String {
    "approle".into()
}
fn default_kubernetes_mount() -> String {
    "kubernetes".into()
}
fn default_jwt_mount() -> String {
    "jwt".into()
}
fn default_sa_token() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}
