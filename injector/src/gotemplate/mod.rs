//! Vault Agent's templates (consul-template, Go's `text/template`) turned
//! into the minijinja the sidecar renders, with the same output byte for
//! byte, or refused naming the line, the construct and a rewrite.
//!
//! The subset vault-k8s users write:
//!
//! | Go template | minijinja |
//! | ----------- | --------- |
//! | `{{ with secret "secret/data/web" }}…{{ end }}` | the body (the file's one secret) |
//! | `.Data.data.KEY` (KV v2), `.Data.KEY` (others), `index .Data.data "KEY"` | `secret["KEY"]` |
//! | `.Data.data`, `.Data` | `secret` |
//! | `{{ range $k, $v := .Data.data }}…{{ end }}` | `{% for v_k, v_v in secret \| dictsort(case_sensitive=true) %}…{% endfor %}` (Go ranges over a map in key order) |
//! | `{{- … -}}` | the white space removed here, by Go's rule (ASCII only) |
//! | `printf "%s:%s" A B` | `A ~ ":" ~ B` (verbs `%s`, `%v`, `%%`) |
//! | `toJSON`, `toJSONPretty` | `go_json`, `go_json_pretty` (the sidecar's, Go's bytes) |
//! | `base64Encode`, `base64Decode` | `b64encode`, `b64decode` |
//! | `{{ with pkiCert "pki/issue/R" … }}`, `.Data.certificate` / `.private_key` / `.issuing_ca` | `secret["tls.crt"]` / `["tls.key"]` / `["ca.crt"]` (the broker's pki keys) |
//! | printing a map, `{{ .Data.data }}` | Go's `map[k:v …]` |
//! | other delimiters (`[[ ]]`) | read with those |
//!
//! A secret path `MOUNT/data/REST` is KV v2, as for Vault: its `.Data` holds
//! `data` and `metadata`. The broker passes no Vault metadata, so
//! `.Data.metadata` is refused. A key the secret lacks is an error in the
//! sidecar, where Go would write `<no value>`.

mod convert;
mod lex;

pub use convert::{Converted, SecretKind, convert, default_template};

/// A template the converter cannot turn into the same output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {construct}: {rewrite}")]
pub struct Refusal {
    /// The template's line (1-based).
    pub line: usize,
    /// What is not converted.
    pub construct: String,
    /// What to write instead.
    pub rewrite: String,
}

#[cfg(test)]
mod tests;
