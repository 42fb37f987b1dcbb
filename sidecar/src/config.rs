//! The sidecar's configuration file (YAML), with environment overrides for
//! the common fields.
//!
//! ```yaml
//! broker: https://coffer-broker.coffer.svc:8443
//! caFile: /etc/coffer/ca.pem
//! tokenFile: /var/run/secrets/coffer/token
//! audience: coffer
//! outputDir: /coffer/secrets
//! adminListen: 127.0.0.1:8099
//! quitListen: 127.0.0.1:8098
//! readyFile: /coffer/ready
//! secrets:
//!   - path: app/db#password
//!     file: db-password
//!     mode: "0400"
//!     action: {signal: HUP, pidFile: /run/app/app.pid}
//! ```
//!
//! The full reference is docs/sidecar.md. The file's shape is in [`file`];
//! [`Config`] is what it becomes once checked: template files read, actions
//! validated into [`Action`]s, so nothing downstream checks them again.

pub(crate) mod file;

use std::path::{Path, PathBuf};

use crate::{
    action::Action,
    render::{Format, RenderSpec, check_template},
    writer::FileName,
};
use file::{ConfigFile, SecretFile};

/// The whole configuration, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The broker: `https://host:port`, `http://127.0.0.1:port`, or `unix:/path`.
    pub broker: String,
    /// CA bundle (PEM) that signs the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// The pod's projected token.
    pub token_file: PathBuf,
    /// The audience the token was issued for. The kubelet sets it in the
    /// projected volume (`serviceAccountToken.audience`); the sidecar only
    /// reports it, since the broker is what checks it.
    pub audience: Option<String>,
    /// Where files are written; must be tmpfs unless explicitly allowed.
    pub output_dir: PathBuf,
    /// Address of the probe endpoint (`/ready`, `/healthz`), e.g. `0.0.0.0:8099`.
    pub admin_listen: Option<String>,
    /// Address of the `/quitquitquit` endpoint: a loopback address only
    /// (e.g. `127.0.0.1:8098`), reachable from the pod's own containers.
    pub quit_listen: Option<String>,
    /// A file created once every secret has been written (for exec probes).
    pub ready_file: Option<PathBuf>,
    /// Exit cleanly once this path exists (a Job's main container creates it).
    pub exit_when_file_exists: Option<PathBuf>,
    /// An action run once per update that changed any file.
    pub action: Option<Action>,
    /// Write to a directory that is not tmpfs. Secrets then touch a disk.
    pub allow_non_tmpfs: bool,
    /// The secrets to write.
    pub secrets: Vec<SecretSpec>,
    /// Local proxies that hold a credential for the app (docs/proxy.md).
    pub proxies: Vec<crate::proxy::ProxySpec>,
}

/// One secret → one file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SecretSpec {
    /// Broker path, optionally `path#key`.
    pub path: String,
    /// File name inside the output directory.
    pub file: FileName,
    /// Octal mode, e.g. 0o400 (the default).
    pub mode: Option<u32>,
    /// Owner uid (default: the sidecar's own).
    pub uid: Option<u32>,
    /// Owner gid (default: the sidecar's own).
    pub gid: Option<u32>,
    /// How the value is rendered (default: raw bytes).
    pub format: Format,
    /// The template source, for `format: template` (a `templateFile` is
    /// read into it by [`Config::load`]).
    pub template: Option<String>,
    /// An action run once each time this file changes.
    pub action: Option<Action>,
}

/// The default mode of every file.
pub const DEFAULT_MODE: u32 = 0o400;

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

/// Where overrides come from (the SDK's, so the names and their reading are
/// one); tests pass a map instead of the process env.
pub use coffer::env::{Env, ProcessEnv};

impl Config {
    /// Reads `path`, then applies `COFFER_BROKER`, `COFFER_CA_FILE`,
    /// `COFFER_TOKEN_FILE` and `COFFER_OUTPUT_DIR` from `env`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = ConfigFile::parse(&text, env)?;
        // Relative template files are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        for spec in &mut config.secrets {
            if let Some(file) = &spec.template_file {
                if spec.template.is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "file {:?}: give `template` or `templateFile`, not both",
                        spec.file.as_str()
                    )));
                }
                let file = base.join(file);
                let source =
                    std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                        path: file.display().to_string(),
                        source,
                    })?;
                spec.template = Some(source);
            }
        }
        Self::validate(config)
    }

    /// Parses YAML text and applies overrides from `env`. Template files are
    /// not read: use [`Config::load`] for those.
    pub fn parse(text: &str, env: &dyn Env) -> Result<Self, ConfigError> {
        Self::validate(ConfigFile::parse(text, env)?)
    }

    /// Environment variables that override the file, by field.
    pub const ENV_VARS: &'static [&'static str] = &[
        coffer::env::BROKER,
        coffer::env::CA_FILE,
        coffer::env::TOKEN_FILE,
        "COFFER_AUDIENCE",
        "COFFER_OUTPUT_DIR",
        "COFFER_ADMIN_LISTEN",
        "COFFER_QUIT_LISTEN",
        "COFFER_READY_FILE",
        "COFFER_EXIT_WHEN_FILE_EXISTS",
    ];

    /// Checks the file as a whole and turns it into the types the sidecar
    /// runs on.
    fn validate(file: ConfigFile) -> Result<Self, ConfigError> {
        if file.secrets.is_empty() && file.proxies.is_empty() {
            return Err(ConfigError::Invalid(
                "no secrets or proxies configured".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for spec in &file.secrets {
            if !names.insert(spec.file.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "file {:?} is listed twice",
                    spec.file.as_str()
                )));
            }
        }
        let secrets = file
            .secrets
            .into_iter()
            .map(SecretSpec::validate)
            .collect::<Result<Vec<_>, _>>()?;
        let proxies = file
            .proxies
            .into_iter()
            .map(|p| p.validate())
            .collect::<Result<Vec<_>, _>>()?;
        let mut listens = std::collections::HashSet::new();
        if let Some(p) = proxies
            .iter()
            .find(|p| !listens.insert(p.listen.to_string()))
        {
            return Err(ConfigError::Invalid(format!(
                "proxy listen {} is used twice",
                p.listen
            )));
        }
        let action = file
            .action
            .map(|action| action.validate())
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("action: {e}")))?;
        if let Some(addr) = &file.admin_listen {
            addr.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::Invalid(format!("adminListen {addr:?} is not host:port"))
            })?;
        }
        if let Some(addr) = &file.quit_listen {
            let parsed = addr
                .parse::<std::net::SocketAddr>()
                .map_err(|_| ConfigError::Invalid(format!("quitListen {addr:?} is not ip:port")))?;
            // Anything that reaches it can stop the sidecar: the pod only.
            if !parsed.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "quitListen {addr:?} must be a loopback address such as 127.0.0.1:8098"
                )));
            }
        }
        Ok(Self {
            broker: file.broker,
            ca_file: file.ca_file,
            token_file: file.token_file,
            audience: file.audience,
            output_dir: file.output_dir,
            admin_listen: file.admin_listen,
            quit_listen: file.quit_listen,
            ready_file: file.ready_file,
            exit_when_file_exists: file.exit_when_file_exists,
            action,
            allow_non_tmpfs: file.allow_non_tmpfs,
            secrets,
            proxies,
        })
    }

    /// The distinct broker paths, for one batched call or watch.
    pub fn paths(&self) -> Vec<String> {
        // Several files may take keys of one secret: it is watched once, so
        // they all change in the same update.
        let mut paths: Vec<String> = self
            .secrets
            .iter()
            .map(|s| s.base_path().to_string())
            .chain(self.proxies.iter().map(|p| p.path.clone()))
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// The configured actions, each with its file (`None`: the global one).
    pub fn actions(&self) -> Vec<(Option<FileName>, Action)> {
        let per_file = self.secrets.iter().filter_map(|spec| {
            let action = spec.action.clone()?;
            Some((Some(spec.file.clone()), action))
        });
        per_file
            .chain(self.action.clone().map(|action| (None, action)))
            .collect()
    }
}

impl SecretSpec {
    /// Checks one entry of `secrets`: its path, its template, its action.
    fn validate(spec: SecretFile) -> Result<Self, ConfigError> {
        let file = spec.file.as_str();
        if spec.path.is_empty() || spec.path.starts_with('#') || spec.path.ends_with('#') {
            return Err(ConfigError::Invalid(format!(
                "file {file:?}: the path must be `path` or `path#key`"
            )));
        }
        match (spec.format, &spec.template, &spec.template_file) {
            (Format::Template, Some(source), _) => check_template(source)
                .map_err(|e| ConfigError::Invalid(format!("file {file:?}: {e}")))?,
            (Format::Template, None, _) => {
                return Err(ConfigError::Invalid(format!(
                    "file {file:?}: format template needs `template` or `templateFile`"
                )));
            }
            (_, None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(format!(
                    "file {file:?}: `template` needs `format: template`"
                )));
            }
        }
        let action = spec
            .action
            .map(|action| action.validate())
            .transpose()
            .map_err(|e| ConfigError::Invalid(format!("file {file:?}: action: {e}")))?;
        Ok(Self {
            path: spec.path,
            file: spec.file,
            mode: spec.mode,
            uid: spec.uid,
            gid: spec.gid,
            format: spec.format,
            template: spec.template,
            action,
        })
    }

    /// The mode to write with.
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(DEFAULT_MODE)
    }

    /// The broker path without any `#key`: what is fetched and watched.
    pub fn base_path(&self) -> &str {
        self.path
            .split_once('#')
            .map_or(&self.path, |(base, _)| base)
    }

    /// The key after `#`, if any.
    pub fn key(&self) -> Option<&str> {
        self.path.split_once('#').map(|(_, key)| key)
    }

    /// How to render this secret (templates resolved by [`Config::load`]).
    pub fn render_spec(&self) -> RenderSpec {
        RenderSpec {
            format: self.format,
            single_key: self.key().unwrap_or("value").to_string(),
            template: self.template.clone(),
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
        for allowed in ["0400", "0440", "0444", "0600", "0640", "0644", "0200"] {
            Config::parse(&format!("{BASE}    mode: \"{allowed}\"\n"), &env)
                .unwrap_or_else(|e| panic!("{allowed}: {e}"));
        }
        for refused in ["0700", "0755", "0460", "0402", "0666", "0401", "0410"] {
            let error = Config::parse(&format!("{BASE}    mode: \"{refused}\"\n"), &env)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("writable by their owner only"),
                "{refused}: {error}"
            );
        }
    }

    #[test]
    fn bad_files_and_unknown_keys_are_refused() {
        let env = HashMap::<String, String>::new();
        assert!(Config::parse(&BASE.replace("file: b", "file: ../b"), &env).is_err());
        assert!(Config::parse(&BASE.replace("file: b", "file: a/b"), &env).is_err());
        assert!(Config::parse(&format!("{BASE}    colour: red\n"), &env).is_err());
    }

    #[test]
    fn templates_are_checked_at_load() {
        let env = HashMap::<String, String>::new();
        let ok = format!("{BASE}    format: template\n    template: \"{{{{ a }}}}\"\n");
        assert!(Config::parse(&ok, &env).is_ok());
        let bad = format!("{BASE}    format: template\n    template: \"{{{{ a \"\n");
        assert!(Config::parse(&bad, &env).is_err());
        let missing = format!("{BASE}    format: template\n");
        assert!(Config::parse(&missing, &env).is_err());
        let stray = format!("{BASE}    template: x\n");
        assert!(Config::parse(&stray, &env).is_err());
    }

    #[test]
    fn template_files_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.j2"), "{{ value }}!").unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!("{BASE}    format: template\n    templateFile: t.j2\n"),
        )
        .unwrap();
        let c = Config::load(&path, &HashMap::<String, String>::new()).unwrap();
        assert_eq!(c.secrets[0].template.as_deref(), Some("{{ value }}!"));
    }

    #[test]
    fn every_common_field_has_an_env_override() {
        let env: HashMap<String, String> = Config::ENV_VARS
            .iter()
            .map(|k| (k.to_string(), "127.0.0.1:9".to_string()))
            .collect();
        let c = Config::parse(BASE, &env).unwrap();
        assert_eq!(c.broker, "127.0.0.1:9");
        assert_eq!(c.ca_file, Some("127.0.0.1:9".into()));
        assert_eq!(c.token_file, PathBuf::from("127.0.0.1:9"));
        assert_eq!(c.audience.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(c.output_dir, PathBuf::from("127.0.0.1:9"));
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(c.quit_listen.as_deref(), Some("127.0.0.1:9"));
        assert_eq!(c.ready_file, Some("127.0.0.1:9".into()));
        assert_eq!(c.exit_when_file_exists, Some("127.0.0.1:9".into()));
    }

    #[test]
    fn the_quit_endpoint_is_loopback_only() {
        let env = HashMap::<String, String>::new();
        for ok in ["127.0.0.1:8098", "[::1]:0"] {
            let text = format!("quitListen: \"{ok}\"\n{BASE}");
            assert!(Config::parse(&text, &env).is_ok(), "{ok}");
        }
        for bad in [
            "0.0.0.0:8098",
            "10.0.0.5:8098",
            "[::]:8098",
            "localhost:8098",
        ] {
            let text = format!("quitListen: \"{bad}\"\n{BASE}");
            assert!(Config::parse(&text, &env).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_of_one_secret_share_one_watched_path() {
        let env = HashMap::<String, String>::new();
        let text = "broker: x\noutputDir: /dev/shm/x\nsecrets:\n  - {path: a/b#u, file: u}\n  - {path: a/b#p, file: p}\n  - {path: a/c, file: c}\n";
        let c = Config::parse(text, &env).unwrap();
        assert_eq!(c.paths(), vec!["a/b".to_string(), "a/c".to_string()]);
        assert_eq!(c.secrets[0].key(), Some("u"));
        assert_eq!(c.secrets[2].key(), None);
    }

    #[test]
    fn the_validated_actions_are_kept_with_their_files() {
        let env = HashMap::<String, String>::new();
        let text = format!(
            "action: {{command: [\"/bin/true\"]}}\n{BASE}    action: {{signal: HUP, pidFile: /run/app.pid}}\n"
        );
        let actions = Config::parse(&text, &env).unwrap().actions();
        assert_eq!(actions.len(), 2);
        assert_eq!(actions[0].0.as_ref().map(FileName::as_str), Some("b"));
        assert!(matches!(actions[0].1, Action::Signal { .. }));
        assert_eq!(actions[1].0, None);
        assert!(matches!(actions[1].1, Action::Command { .. }));
    }

    #[test]
    fn a_bad_action_is_refused_naming_its_file() {
        let env = HashMap::<String, String>::new();
        let text = format!("{BASE}    action: {{signal: HUP}}\n");
        let error = Config::parse(&text, &env).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid config: file \"b\": action: a signal needs exactly one of pidFile or processName"
        );
        let global = format!("action: {{}}\n{BASE}");
        let error = Config::parse(&global, &env).unwrap_err().to_string();
        assert_eq!(
            error,
            "invalid config: action: give exactly one of signal, command or post"
        );
    }

    #[test]
    fn actions_are_validated() {
        let env = HashMap::<String, String>::new();
        let ok = format!("{BASE}    action: {{signal: HUP, pidFile: /run/app.pid}}\n");
        assert!(Config::parse(&ok, &env).is_ok());
        let two = format!("{BASE}    action: {{signal: HUP, post: \"http://x/\"}}\n");
        assert!(Config::parse(&two, &env).is_err());
        let nowhere = format!("{BASE}    action: {{signal: HUP}}\n");
        assert!(Config::parse(&nowhere, &env).is_err());
        let global = format!("action: {{command: [\"/bin/true\"]}}\n{BASE}");
        assert!(Config::parse(&global, &env).unwrap().action.is_some());
    }
}
