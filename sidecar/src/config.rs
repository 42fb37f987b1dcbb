//! The sidecar's configuration file (YAML), with environment overrides for
//! the common fields.
//!
//! ```yaml
//! broker: https://coffer-broker.coffer.svc:8443
//! caFile: /etc/coffer/ca.pem
//! tokenFile: /var/run/secrets/coffer/token
//! outputDir: /coffer/secrets
//! secrets:
//!   - path: app/db#password
//!     file: db-password
//!     mode: "0400"
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{render::Format, writer::FileName};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// The broker: `https://host:port`, `http://127.0.0.1:port`, or `unix:/path`.
    pub broker: String,
    /// CA bundle (PEM) that signs the broker's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The pod's projected token.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Where files are written; must be tmpfs unless explicitly allowed.
    pub output_dir: PathBuf,
    /// Write to a directory that is not tmpfs. Secrets then touch a disk.
    #[serde(default)]
    pub allow_non_tmpfs: bool,
    /// The secrets to write.
    pub secrets: Vec<SecretSpec>,
}

/// One secret → one file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretSpec {
    /// Broker path, optionally `path#key`.
    pub path: String,
    /// File name inside the output directory.
    pub file: FileName,
    /// Octal mode as a string, e.g. "0400" (the default).
    #[serde(default, deserialize_with = "mode::deserialize")]
    pub mode: Option<u32>,
    /// Owner uid (default: the sidecar's own).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Owner gid (default: the sidecar's own).
    #[serde(default)]
    pub gid: Option<u32>,
    /// How the value is rendered (default: raw bytes).
    #[serde(default)]
    pub format: Format,
}

/// The default mode of every file.
pub const DEFAULT_MODE: u32 = 0o400;

impl SecretSpec {
    /// The mode to write with.
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(DEFAULT_MODE)
    }
}

fn default_token_file() -> PathBuf {
    PathBuf::from(coffer::TokenSource::PROJECTED_PATH)
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] serde_norway::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Where overrides come from; tests pass a map instead of the process env.
pub trait Env {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<S: std::hash::BuildHasher> Env for std::collections::HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Config {
    /// Reads `path`, then applies `COFFER_BROKER`, `COFFER_CA_FILE`,
    /// `COFFER_TOKEN_FILE` and `COFFER_OUTPUT_DIR` from `env`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, env)
    }

    /// Parses YAML text and applies overrides from `env`.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        let mut config: Self = serde_norway::from_str(text)?;
        if let Some(v) = env.get("COFFER_BROKER") {
            config.broker = v;
        }
        if let Some(v) = env.get("COFFER_CA_FILE") {
            config.ca_file = Some(v.into());
        }
        if let Some(v) = env.get("COFFER_TOKEN_FILE") {
            config.token_file = v.into();
        }
        if let Some(v) = env.get("COFFER_OUTPUT_DIR") {
            config.output_dir = v.into();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.secrets.is_empty() {
            return Err(ConfigError::Invalid("no secrets configured".into()));
        }
        let mut names = std::collections::HashSet::new();
        for spec in &self.secrets {
            if !names.insert(spec.file.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "file {:?} is listed twice",
                    spec.file.as_str()
                )));
            }
            if spec.path.is_empty() {
                return Err(ConfigError::Invalid("a secret has an empty path".into()));
            }
        }
        Ok(())
    }

    /// The distinct broker paths, for one batched call or watch.
    pub fn paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.secrets.iter().map(|s| s.path.clone()).collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

mod mode {
    use serde::{Deserialize, Deserializer, de::Error};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Text(text)) => {
                let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .map_err(|_| D::Error::custom(format!("mode {text:?} is not octal")))?;
                if mode > 0o777 {
                    return Err(D::Error::custom(format!("mode {text:?} is above 0777")));
                }
                Ok(Some(mode))
            }
            // YAML readers disagree on whether 0400 is octal; a quoted string
            // is unambiguous, so ask for one.
            Some(Raw::Number(n)) => Err(D::Error::custom(format!(
                "mode {n} must be a quoted octal string such as \"0400\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const BASE: &str =
        "broker: http://127.0.0.1:1\noutputDir: /dev/shm/x\nsecrets:\n  - path: a/b\n    file: b\n";

    #[test]
    fn defaults_and_overrides() {
        let env: HashMap<String, String> =
            [("COFFER_OUTPUT_DIR".to_string(), "/dev/shm/y".to_string())].into();
        let c = Config::parse(BASE, &env).unwrap();
        assert_eq!(c.output_dir, PathBuf::from("/dev/shm/y"));
        assert_eq!(c.secrets[0].mode(), 0o400);
        assert_eq!(
            c.token_file,
            PathBuf::from(coffer::TokenSource::PROJECTED_PATH)
        );
    }

    #[test]
    fn modes_are_quoted_octal() {
        let env = HashMap::<String, String>::new();
        let c = Config::parse(&format!("{BASE}    mode: \"0440\"\n"), &env).unwrap();
        assert_eq!(c.secrets[0].mode(), 0o440);
        assert!(Config::parse(&format!("{BASE}    mode: 440\n"), &env).is_err());
        assert!(Config::parse(&format!("{BASE}    mode: \"0999\"\n"), &env).is_err());
    }

    #[test]
    fn bad_files_and_unknown_keys_are_refused() {
        let env = HashMap::<String, String>::new();
        assert!(Config::parse(&BASE.replace("file: b", "file: ../b"), &env).is_err());
        assert!(Config::parse(&BASE.replace("file: b", "file: a/b"), &env).is_err());
        assert!(Config::parse(&format!("{BASE}    colour: red\n"), &env).is_err());
    }
}
