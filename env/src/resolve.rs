//! From a [`Plan`] and the broker's secrets to the app's environment.
//!
//! All or nothing: every reference resolves, or the error names the
//! variable and the path (never a value) and no environment is made. The
//! values live in zeroizing buffers until they are handed to `exec` or to
//! a child's spawn.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt,
    process::Command,
    time::Duration,
};

use coffer::{Client, Code, SecretData};
use coffer_runtime::Backoff;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::reference::{Entry, Plan, map_variable, name_of};

/// One variable's value: the environment's own, or a secret's bytes.
enum Value {
    Plain(OsString),
    Secret(Zeroizing<Vec<u8>>),
}

/// The app's environment, every reference resolved. `Debug` names the
/// variables, never a value.
pub struct ResolvedEnv {
    vars: Vec<(OsString, Value)>,
}

impl std::fmt::Debug for ResolvedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.vars.iter().map(|(name, _)| name))
            .finish()
    }
}

impl ResolvedEnv {
    /// Gives `command` exactly this environment (nothing inherited).
    pub fn apply(&self, command: &mut Command) {
        command.env_clear();
        for (name, value) in &self.vars {
            let value = match value {
                Value::Plain(value) => value.as_os_str(),
                Value::Secret(bytes) => OsStr::from_bytes(bytes),
            };
            command.env(name, value);
        }
    }

    /// The variable names, in order (for tests and logs).
    pub fn names(&self) -> impl Iterator<Item = &OsStr> {
        self.vars.iter().map(|(name, _)| name.as_os_str())
    }

    /// How many variables came from the broker.
    pub fn resolved(&self) -> usize {
        self.vars
            .iter()
            .filter(|(_, v)| matches!(v, Value::Secret(_)))
            .count()
    }
}

/// Why the environment cannot be made. Names variables and paths, never a
/// value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The broker refused or failed a path (denied, unauthenticated, not
    /// found once the time was up, ...).
    #[error("{vars} (coffer:{path}): {source}")]
    Fetch {
        /// The variables referring to the path.
        vars: String,
        /// The path.
        path: String,
        /// The broker's answer.
        #[source]
        source: coffer::Error,
    },
    /// The broker could not be reached (or did not answer) before the time
    /// was up.
    #[error("cannot reach the broker after {after:?} (needed by {needed}): {source}")]
    Unreachable {
        /// How long it was tried.
        after: Duration,
        /// Every variable and path that was waiting.
        needed: String,
        /// The last failure.
        #[source]
        source: coffer::Error,
    },
    /// No answer at all before the time was up.
    #[error("no answer from the broker within {after:?} (needed by {needed})")]
    Timeout {
        /// How long it was tried.
        after: Duration,
        /// Every variable and path that was waiting.
        needed: String,
    },
    /// The secret has no such key.
    #[error("{var} (coffer:{path}#{key}): the secret has no key {key:?}")]
    MissingKey {
        /// The variable.
        var: String,
        /// The path.
        path: String,
        /// The key.
        key: String,
    },
    /// `#key` on a single-value secret.
    #[error(
        "{var} (coffer:{path}#{key}): the secret is a single value, not a map: refer to it as coffer:{path}"
    )]
    NotAMap {
        /// The variable.
        var: String,
        /// The path.
        path: String,
        /// The key asked for.
        key: String,
    },
    /// A value holds a NUL byte, which no environment variable can.
    #[error(
        "{var} (coffer:{reference}): the value holds a NUL byte, which an environment variable cannot"
    )]
    Nul {
        /// The variable.
        var: String,
        /// The reference.
        reference: String,
    },
    /// A map key that makes no portable variable name.
    #[error(
        "{var} (coffer:{path}): the key {key:?} makes no variable name ([A-Za-z_][A-Za-z0-9_]* after the prefix {prefix:?})"
    )]
    BadKey {
        /// The variable.
        var: String,
        /// The path.
        path: String,
        /// The key (key names are not secret).
        key: String,
        /// The prefix in use.
        prefix: String,
    },
    /// Two variables would get one name.
    #[error("{name} would be set twice: by {first} and by {second}")]
    Collision {
        /// The name.
        name: String,
        /// What sets it first.
        first: String,
        /// What sets it again.
        second: String,
    },
}

impl ResolveError {
    /// A short, non-secret reason for an acknowledgement.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingKey { .. } => "missing key",
            Self::NotAMap { .. } => "not a map",
            Self::Nul { .. } => "NUL in value",
            Self::BadKey { .. } => "key is no variable name",
            Self::Collision { .. } => "variable set twice",
            _ => "fetch failed",
        }
    }
}

/// Builds the environment from `plan` with the secrets `get` finds by base
/// path (every path of the plan must be there).
pub fn build<'s>(
    plan: &Plan,
    get: impl Fn(&str) -> Option<&'s SecretData>,
) -> Result<ResolvedEnv, ResolveError> {
    let mut vars = Vec::with_capacity(plan.entries.len());
    // Which variable (or reference) set each name, for a collision's message.
    let mut set_by: BTreeMap<OsString, String> = BTreeMap::new();
    let mut push = |name: OsString, value: Value, by: String| {
        if let Some(first) = set_by.get(&name) {
            return Err(ResolveError::Collision {
                name: name_of(&name),
                first: first.clone(),
                second: by,
            });
        }
        set_by.insert(name.clone(), by);
        vars.push((name, value));
        Ok(())
    };
    for entry in &plan.entries {
        match entry {
            Entry::Pass { name, value } => {
                push(name.clone(), Value::Plain(value.clone()), name_of(name))?;
            }
            Entry::Resolve {
                name,
                reference,
                prefix,
            } => {
                let path = &reference.path;
                // Fetched as a whole before this is called: absent only
                // if the caller broke that rule, and then it is refused.
                let data = get(path).ok_or_else(|| ResolveError::Fetch {
                    vars: name.clone(),
                    path: path.clone(),
                    source: coffer::Error::InvalidResponse("the path was not fetched"),
                })?;
                let by = format!("{name}=coffer:{}", reference.display());
                match (&reference.key, data) {
                    (Some(key), SecretData::Map(map)) => {
                        let value = map.get(key).ok_or_else(|| ResolveError::MissingKey {
                            var: name.clone(),
                            path: path.clone(),
                            key: key.clone(),
                        })?;
                        let value = secret(value.expose(), name, &reference.display())?;
                        push(name.into(), value, by)?;
                    }
                    (Some(key), SecretData::Bytes(_)) => {
                        return Err(ResolveError::NotAMap {
                            var: name.clone(),
                            path: path.clone(),
                            key: key.clone(),
                        });
                    }
                    (None, SecretData::Bytes(bytes)) => {
                        let value = secret(bytes.expose(), name, path)?;
                        push(name.into(), value, by)?;
                    }
                    (None, SecretData::Map(map)) => {
                        for (key, value) in map {
                            let var =
                                map_variable(prefix, key).ok_or_else(|| ResolveError::BadKey {
                                    var: name.clone(),
                                    path: path.clone(),
                                    key: key.clone(),
                                    prefix: prefix.clone(),
                                })?;
                            let value = secret(value.expose(), name, &format!("{path}#{key}"))?;
                            push(var.into(), value, format!("{by} (key {key:?})"))?;
                        }
                    }
                }
            }
        }
    }
    Ok(ResolvedEnv { vars })
}

fn secret(bytes: &[u8], var: &str, reference: &str) -> Result<Value, ResolveError> {
    if bytes.contains(&0) {
        return Err(ResolveError::Nul {
            var: var.to_string(),
            reference: reference.to_string(),
        });
    }
    Ok(Value::Secret(Zeroizing::new(bytes.to_vec())))
}

/// Errors that waiting will not fix.
fn is_permanent(error: &coffer::Error) -> bool {
    matches!(
        error.code(),
        Some(Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument)
    ) || error.code().is_none()
}

/// Every path of `plan` fetched (one batched call per attempt), with their
/// versions. Retries what may pass (an unreachable broker, a path not found
/// yet) with backoff until `timeout`; fails at once on what will not (a
/// denied path, a refused token).
pub async fn fetch(
    client: &Client,
    plan: &Plan,
    timeout: Duration,
) -> Result<BTreeMap<String, coffer::Secret>, ResolveError> {
    let paths = plan.paths();
    let until = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let needed = || {
        paths
            .iter()
            .map(|p| format!("{} (coffer:{p})", plan.variables_of(p).join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut found = BTreeMap::new();
    loop {
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let last = match tokio::time::timeout_at(until, client.get_many(missing.clone())).await {
            Err(_) => {
                return Err(ResolveError::Timeout {
                    after: timeout,
                    needed: needed(),
                });
            }
            Ok(Err(error)) if is_permanent(&error) => {
                // The whole call refused (the token): every path fails alike.
                let path = missing.first().cloned().unwrap_or_default();
                return Err(ResolveError::Fetch {
                    vars: plan.variables_of(&path).join(", "),
                    path,
                    source: error,
                });
            }
            Ok(Err(error)) => LastError::Call(error),
            Ok(Ok(results)) => {
                let mut last = None;
                for (path, result) in missing.into_iter().zip(results) {
                    match result {
                        Ok(secret) => {
                            found.insert(path, secret);
                        }
                        Err(error) if is_permanent(&error) => {
                            return Err(ResolveError::Fetch {
                                vars: plan.variables_of(&path).join(", "),
                                path,
                                source: error,
                            });
                        }
                        Err(error) => last = Some(LastError::Path(path, error)),
                    }
                }
                match last {
                    Some(last) => last,
                    None => continue,
                }
            }
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= until {
            return Err(match last {
                LastError::Call(source) => ResolveError::Unreachable {
                    after: timeout,
                    needed: needed(),
                    source,
                },
                LastError::Path(path, source) => ResolveError::Fetch {
                    vars: plan.variables_of(&path).join(", "),
                    path,
                    source,
                },
            });
        }
        match &last {
            LastError::Call(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "broker not reachable; retrying")
            }
            LastError::Path(path, error) => {
                tracing::warn!(path, %error, retry_in_ms = delay.as_millis() as u64, "path not served; retrying")
            }
        }
        tokio::time::sleep(delay).await;
    }
}

enum LastError {
    Call(coffer::Error),
    Path(String, coffer::Error),
}

/// The versions of `secrets`, by path.
pub fn versions(secrets: &BTreeMap<String, coffer::Secret>) -> BTreeMap<String, u64> {
    secrets
        .iter()
        .map(|(path, secret)| (path.clone(), secret.version()))
        .collect()
}

/// The paths whose version in `now` differs from `applied`.
pub fn changed(
    applied: &BTreeMap<String, u64>,
    now: &BTreeMap<String, coffer::Secret>,
) -> BTreeSet<String> {
    now.iter()
        .filter(|(path, secret)| applied.get(*path) != Some(&secret.version()))
        .map(|(path, _)| path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer::SecretBytes;

    fn plan(vars: &[(&str, &str)]) -> Plan {
        Plan::parse(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .unwrap()
    }

    fn map(items: &[(&str, &[u8])]) -> SecretData {
        SecretData::Map(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), SecretBytes::from(*v)))
                .collect(),
        )
    }

    fn env_of(
        plan: &Plan,
        secrets: &BTreeMap<String, SecretData>,
    ) -> Result<Vec<(String, String)>, ResolveError> {
        let env = build(plan, |p| secrets.get(p))?;
        let mut command = Command::new("x");
        env.apply(&mut command);
        Ok(command
            .get_envs()
            .map(|(k, v)| (name_of(k), name_of(v.unwrap_or_default())))
            .collect())
    }

    fn secrets() -> BTreeMap<String, SecretData> {
        [
            (
                "shop/db".to_string(),
                map(&[
                    ("password", b"canary-pw"),
                    ("user", b"app"),
                    ("api-key", b"k"),
                ]),
            ),
            (
                "shop/token".to_string(),
                SecretData::Bytes(SecretBytes::from(&b"canary-token"[..])),
            ),
        ]
        .into()
    }

    #[test]
    fn keys_single_values_and_whole_maps_resolve() {
        let plan = plan(&[
            ("A", "plain"),
            ("PW", "coffer:shop/db#password"),
            ("TOKEN", "coffer:shop/token"),
            ("DB", "coffer:shop/db"),
        ]);
        let mut env = env_of(&plan, &secrets()).unwrap();
        env.sort();
        let expected = [
            ("A", "plain"),
            ("DB_API_KEY", "k"),
            ("DB_PASSWORD", "canary-pw"),
            ("DB_USER", "app"),
            ("PW", "canary-pw"),
            ("TOKEN", "canary-token"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn failures_name_the_variable_and_path_never_the_value() {
        let cases = [
            (
                plan(&[("PW", "coffer:shop/db#nope")]),
                "PW (coffer:shop/db#nope): the secret has no key \"nope\"",
            ),
            (
                plan(&[("T", "coffer:shop/token#k")]),
                "T (coffer:shop/token#k): the secret is a single value",
            ),
            (
                plan(&[("DB_PASSWORD", "x"), ("DB", "coffer:shop/db")]),
                "DB_PASSWORD would be set twice",
            ),
        ];
        for (plan, expected) in cases {
            let error = env_of(&plan, &secrets()).unwrap_err();
            let text = format!("{error} {error:?}");
            assert!(text.starts_with(expected), "{text}");
            assert!(!text.contains("canary"), "{text}");
        }
    }

    #[test]
    fn a_nul_byte_or_a_bad_key_is_refused() {
        let mut secrets = secrets();
        secrets.insert(
            "shop/nul".into(),
            SecretData::Bytes(SecretBytes::from(&b"a\0canary"[..])),
        );
        secrets.insert("shop/odd".into(), map(&[("a b", b"canary")]));
        let error = env_of(&plan(&[("N", "coffer:shop/nul")]), &secrets).unwrap_err();
        assert!(matches!(error, ResolveError::Nul { .. }), "{error}");
        let error = env_of(&plan(&[("O", "coffer:shop/odd")]), &secrets).unwrap_err();
        assert!(matches!(error, ResolveError::BadKey { .. }), "{error}");
        assert!(!format!("{error}").contains("canary"));
    }

    #[test]
    fn debug_names_variables_only() {
        let secrets = secrets();
        let env = build(&plan(&[("PW", "coffer:shop/db#password")]), |p| {
            secrets.get(p)
        })
        .unwrap();
        let text = format!("{env:?}");
        assert_eq!(text, "[\"PW\"]");
        assert_eq!(env.resolved(), 1);
    }
}
