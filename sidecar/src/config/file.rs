//! The configuration file as written: the YAML's shape and the environment
//! overrides, before [`Config`](super::Config) validates it.
//!
//! Kept apart so that the types the sidecar runs on hold only what was
//! checked (an [`Action`](crate::action::Action), not its description),
//! while the file keeps its own spelling and its errors their wording.

use std::path::PathBuf;

use serde::Deserialize;

use super::Env;
use crate::{action::ActionSpec, render::Format, writer::FileName};

/// The whole file (field meanings: [`Config`](super::Config)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ConfigFile {
    pub(super) broker: String,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default = "default_token_file")]
    pub(super) token_file: PathBuf,
    #[serde(default)]
    pub(super) audience: Option<String>,
    pub(super) output_dir: PathBuf,
    #[serde(default)]
    pub(super) admin_listen: Option<String>,
    #[serde(default)]
    pub(super) quit_listen: Option<String>,
    #[serde(default)]
    pub(super) ready_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) exit_when_file_exists: Option<PathBuf>,
    #[serde(default)]
    pub(super) action: Option<ActionSpec>,
    #[serde(default)]
    pub(super) allow_non_tmpfs: bool,
    #[serde(default)]
    pub(super) secrets: Vec<SecretFile>,
    #[serde(default)]
    pub(super) proxies: Vec<crate::proxy::config::ProxyFile>,
}

/// One entry of `secrets` (field meanings: [`SecretSpec`](super::SecretSpec)).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct SecretFile {
    pub(super) path: String,
    pub(super) file: FileName,
    #[serde(default, deserialize_with = "mode::deserialize")]
    pub(super) mode: Option<u32>,
    #[serde(default)]
    pub(super) uid: Option<u32>,
    #[serde(default)]
    pub(super) gid: Option<u32>,
    #[serde(default)]
    pub(super) format: Format,
    #[serde(default)]
    pub(super) template: Option<String>,
    #[serde(default)]
    pub(super) template_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) action: Option<ActionSpec>,
}

fn default_token_file() -> PathBuf {
    PathBuf::from(coffer::TokenSource::PROJECTED_PATH)
}

impl ConfigFile {
    /// Parses YAML text and applies the overrides from `env`
    /// ([`Config::ENV_VARS`](super::Config::ENV_VARS)).
    pub(super) fn parse(text: &str, env: &dyn Env) -> Result<Self, serde_norway::Error> {
        let mut config: Self = serde_norway::from_str(text)?;
        if let Some(v) = env.get(coffer::env::BROKER) {
            config.broker = v;
        }
        if let Some(v) = env.get(coffer::env::CA_FILE) {
            config.ca_file = Some(v.into());
        }
        if let Some(v) = env.get(coffer::env::TOKEN_FILE) {
            config.token_file = v.into();
        }
        if let Some(v) = env.get("COFFER_OUTPUT_DIR") {
            config.output_dir = v.into();
        }
        if let Some(v) = env.get("COFFER_AUDIENCE") {
            config.audience = Some(v);
        }
        if let Some(v) = env.get("COFFER_ADMIN_LISTEN") {
            config.admin_listen = Some(v);
        }
        if let Some(v) = env.get("COFFER_QUIT_LISTEN") {
            config.quit_listen = Some(v);
        }
        if let Some(v) = env.get("COFFER_READY_FILE") {
            config.ready_file = Some(v.into());
        }
        if let Some(v) = env.get("COFFER_EXIT_WHEN_FILE_EXISTS") {
            config.exit_when_file_exists = Some(v.into());
        }
        Ok(config)
    }
}

/// Modes as quoted octal strings (`"0400"`).
pub(crate) mod mode {
    use serde::{Deserialize, Deserializer, de::Error};

    /// Execute for anyone, write for group or others.
    const FORBIDDEN_BITS: u32 = 0o133;

    /// A secret file's mode: quoted octal, and see [`FORBIDDEN_BITS`].
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let Some(mode) = octal(d)? else {
            return Ok(None);
        };
        // A secret file is data, read by its owner and maybe its group or
        // everyone in the pod; never executable, and never writable but by
        // its owner (another uid in the pod could otherwise replace what the
        // app reads).
        if mode & FORBIDDEN_BITS != 0 {
            return Err(D::Error::custom(format!(
                "mode \"{mode:04o}\": secret files may be readable by owner, group and others \
                 and writable by their owner only (0400, 0440, 0444, 0600, 0640, 0644); \
                 no execute bits, no group or other write"
            )));
        }
        Ok(Some(mode))
    }

    /// Any mode up to 0777, as a quoted octal string; the caller says which
    /// bits make sense for what it is.
    pub(crate) fn octal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
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
