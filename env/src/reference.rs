//! Which environment variables are references, and what each asks for.
//!
//! A value `coffer:PATH#KEY` is one key of a map secret (or `coffer:PATH`
//! for a single-value secret); `coffer:PATH` naming a map secret becomes
//! one variable per entry, `NAME_KEY` (the key upper-cased, `-` and `.`
//! as `_`), or under the prefix set by `COFFER_ENV_PREFIX_<NAME>`. A value
//! that must stay literally `coffer:…` is written `\coffer:…` (one leading
//! backslash is removed). Every other variable passes untouched, bytes and
//! all. Variables named `COFFER_ENV_*` are this program's own settings and
//! are not passed on.
//!
//! Parsing reads only the references, never a secret: its errors name the
//! variable, which is safe to log.

use std::{
    collections::BTreeSet,
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt, OsStringExt},
};

/// The scheme a reference starts with.
pub const SCHEME: &str = "coffer:";
/// Variables under this prefix are coffer-env's own and not passed on.
pub const OWN_PREFIX: &str = "COFFER_ENV_";
/// `COFFER_ENV_PREFIX_<NAME>` names the prefix of a whole-map reference
/// in `NAME`.
pub const PREFIX_VAR: &str = "COFFER_ENV_PREFIX_";
/// The longest reference accepted (the broker's own path bound is lower).
const MAX_REFERENCE: usize = 1024;

/// One `coffer:` reference: a broker path and, optionally, one key of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The base path, as fetched and watched (`shop/db`).
    pub path: String,
    /// The key after `#`, if any.
    pub key: Option<String>,
}

impl Reference {
    /// The reference as written, without the scheme (`shop/db#password`).
    pub fn display(&self) -> String {
        match &self.key {
            Some(key) => format!("{}#{key}", self.path),
            None => self.path.clone(),
        }
    }
}

/// What becomes of one variable of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Passed on as it is (a literal, or an escaped `\coffer:` with its
    /// backslash removed).
    Pass {
        /// The variable.
        name: OsString,
        /// Its value.
        value: OsString,
    },
    /// Resolved from the broker.
    Resolve {
        /// The variable holding the reference.
        name: String,
        /// What it refers to.
        reference: Reference,
        /// For a whole-map reference: the prefix of the variables made
        /// from its entries (`NAME_`, or `COFFER_ENV_PREFIX_<NAME>`'s value).
        prefix: String,
    },
}

/// The environment as a plan: every variable, in order, and what becomes
/// of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each variable of the environment, except coffer-env's own.
    pub entries: Vec<Entry>,
}

/// A reference that cannot be used. Names the variable; the reference is
/// not a secret, the environment's other values are never quoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// A reference that does not parse.
    #[error(
        "{name}: {reason} (expected coffer:PATH or coffer:PATH#KEY; write \\coffer: for a literal value)"
    )]
    Malformed {
        /// The variable.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A variable whose name is not text holds a reference.
    #[error("a variable whose name is not UTF-8 holds a coffer: reference")]
    NonUtf8Name,
    /// `COFFER_ENV_PREFIX_<NAME>` for a variable that holds no whole-map
    /// reference.
    #[error("{0} names no variable holding a whole-map reference (coffer:PATH)")]
    OrphanPrefix(String),
}

impl Plan {
    /// Reads `vars` (the process's environment, or a test's list).
    pub fn parse(
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, ReferenceError> {
        let vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
        let mut prefixes = std::collections::BTreeMap::new();
        for (name, value) in &vars {
            if let Some(target) = name.to_str().and_then(|n| n.strip_prefix(PREFIX_VAR)) {
                prefixes.insert(target.to_string(), value.to_string_lossy().into_owned());
            }
        }
        let mut used = BTreeSet::new();
        let mut entries = Vec::with_capacity(vars.len());
        for (name, value) in vars {
            if name.as_bytes().starts_with(OWN_PREFIX.as_bytes()) {
                continue;
            }
            let bytes = value.as_bytes();
            if let Some(escaped) = bytes.strip_prefix(b"\\")
                && escaped.starts_with(SCHEME.as_bytes())
            {
                let value = OsString::from_vec(escaped.to_vec());
                entries.push(Entry::Pass { name, value });
                continue;
            }
            let Some(rest) = bytes.strip_prefix(SCHEME.as_bytes()) else {
                entries.push(Entry::Pass { name, value });
                continue;
            };
            let name = name
                .into_string()
                .map_err(|_| ReferenceError::NonUtf8Name)?;
            let reference = parse_reference(&name, rest)?;
            let prefix = if reference.key.is_none() {
                used.insert(name.clone());
                prefixes
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| format!("{name}_"))
            } else {
                String::new()
            };
            entries.push(Entry::Resolve {
                name,
                reference,
                prefix,
            });
        }
        if let Some(orphan) = prefixes.keys().find(|k| !used.contains(*k)) {
            return Err(ReferenceError::OrphanPrefix(format!(
                "{PREFIX_VAR}{orphan}"
            )));
        }
        Ok(Self { entries })
    }

    /// The distinct base paths referenced, in order: what is fetched and
    /// watched.
    pub fn paths(&self) -> Vec<String> {
        let paths: BTreeSet<&str> = self
            .references()
            .map(|(_, reference)| reference.path.as_str())
            .collect();
        paths.into_iter().map(str::to_string).collect()
    }

    /// Each variable holding a reference, with it.
    pub fn references(&self) -> impl Iterator<Item = (&str, &Reference)> {
        self.entries.iter().filter_map(|entry| match entry {
            Entry::Resolve {
                name, reference, ..
            } => Some((name.as_str(), reference)),
            Entry::Pass { .. } => None,
        })
    }

    /// The variables referring to `path` (for an error message).
    pub fn variables_of(&self, path: &str) -> Vec<&str> {
        self.references()
            .filter(|(_, reference)| reference.path == path)
            .map(|(name, _)| name)
            .collect()
    }
}

fn parse_reference(name: &str, rest: &[u8]) -> Result<Reference, ReferenceError> {
    let malformed = |reason| ReferenceError::Malformed {
        name: name.to_string(),
        reason,
    };
    if rest.len() > MAX_REFERENCE {
        return Err(malformed("the reference is too long"));
    }
    let text = std::str::from_utf8(rest).map_err(|_| malformed("the reference is not UTF-8"))?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed(
            "the reference holds a space or a control character",
        ));
    }
    let (path, key) = match text.split_once('#') {
        Some((path, key)) => (path, Some(key)),
        None => (text, None),
    };
    if path.is_empty() {
        return Err(malformed("the path is empty"));
    }
    if path.starts_with('/') || path.ends_with('/') || path.contains("//") {
        return Err(malformed("the path has an empty segment"));
    }
    match key {
        Some("") => Err(malformed("the key after # is empty")),
        Some(key) if key.contains('#') => Err(malformed("more than one #")),
        _ => Ok(Reference {
            path: path.to_string(),
            key: key.map(str::to_string),
        }),
    }
}

/// The variable an entry `key` of a whole-map reference becomes:
/// `prefix` + the key upper-cased, `-` and `.` as `_`; `None` when that is
/// not a portable variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn map_variable(prefix: &str, key: &str) -> Option<String> {
    let suffix: String = key
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    let name = format!("{prefix}{suffix}");
    let mut chars = name.chars();
    let first = chars.next()?;
    let valid = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

/// `name` as text for a message (lossy: names are not secret).
pub fn name_of(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(vars: &[(&str, &str)]) -> Result<Plan, ReferenceError> {
        Plan::parse(
            vars.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
    }

    fn resolve(name: &str, path: &str, key: Option<&str>, prefix: &str) -> Entry {
        Entry::Resolve {
            name: name.into(),
            reference: Reference {
                path: path.into(),
                key: key.map(Into::into),
            },
            prefix: prefix.into(),
        }
    }

    #[test]
    fn references_are_found_and_the_rest_passes_untouched() {
        let plan = plan(&[
            ("PATH", "/usr/bin"),
            ("DB_PASSWORD", "coffer:shop/db#password"),
            ("DB", "coffer:shop/db"),
            ("NOTE", "see coffer:shop/db"),
        ])
        .unwrap();
        assert_eq!(
            plan.entries,
            vec![
                Entry::Pass {
                    name: "PATH".into(),
                    value: "/usr/bin".into()
                },
                resolve("DB_PASSWORD", "shop/db", Some("password"), ""),
                resolve("DB", "shop/db", None, "DB_"),
                Entry::Pass {
                    name: "NOTE".into(),
                    value: "see coffer:shop/db".into()
                },
            ]
        );
        assert_eq!(plan.paths(), vec!["shop/db".to_string()]);
        assert_eq!(plan.variables_of("shop/db"), vec!["DB_PASSWORD", "DB"]);
    }

    #[test]
    fn a_backslash_keeps_a_literal_coffer_value() {
        let plan = plan(&[("A", "\\coffer:shop/db"), ("B", "\\\\coffer:x")]).unwrap();
        assert_eq!(
            plan.entries,
            vec![
                Entry::Pass {
                    name: "A".into(),
                    value: "coffer:shop/db".into()
                },
                Entry::Pass {
                    name: "B".into(),
                    value: "\\\\coffer:x".into()
                },
            ]
        );
    }

    #[test]
    fn own_settings_are_not_passed_on_and_set_map_prefixes() {
        let plan = plan(&[
            ("COFFER_ENV_LOG_LEVEL", "debug"),
            ("COFFER_ENV_PREFIX_DB", "DATABASE_"),
            ("DB", "coffer:shop/db"),
        ])
        .unwrap();
        assert_eq!(
            plan.entries,
            vec![resolve("DB", "shop/db", None, "DATABASE_")]
        );
        let error = self::plan(&[("COFFER_ENV_PREFIX_X", "Y_")]).unwrap_err();
        assert_eq!(
            error,
            ReferenceError::OrphanPrefix("COFFER_ENV_PREFIX_X".into())
        );
    }

    #[test]
    fn malformed_references_name_their_variable() {
        for bad in [
            "coffer:",
            "coffer:#k",
            "coffer:a/b#",
            "coffer:a/b#c#d",
            "coffer:/a",
            "coffer:a//b",
            "coffer:a b",
        ] {
            let error = plan(&[("SECRET_VAR", bad)]).unwrap_err().to_string();
            assert!(error.starts_with("SECRET_VAR: "), "{bad}: {error}");
        }
    }

    #[test]
    fn map_keys_become_portable_names() {
        assert_eq!(
            map_variable("DB_", "password").as_deref(),
            Some("DB_PASSWORD")
        );
        assert_eq!(
            map_variable("", "api-key.v2").as_deref(),
            Some("API_KEY_V2")
        );
        assert_eq!(map_variable("", "2fa"), None);
        assert_eq!(map_variable("DB_", "a b"), None);
        assert_eq!(map_variable("DB_", "é"), None);
    }
}
