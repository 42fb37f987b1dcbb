//! A template checked at admission by rendering it as the sidecar will.
//!
//! The sidecar renders with its own code (`coffer_sidecar::render`):
//! minijinja, undefined values an error, every key of the secret a
//! variable of its own and all of them the map `secret`; with `path#key`,
//! that key alone. The injector calls the same function on the same
//! configuration, with a placeholder for every value: `"0"`, which every
//! filter that parses a value (`int`, `float`) accepts. The keys are the
//! one `path#key` names; for a whole secret, whose keys the injector cannot
//! know, every key the template names (its undeclared variables,
//! `secret.KEY` and `secret["KEY"]`), so that a name is never wrong, only
//! its use: `{{ source.password }}` (a value has no attributes), an unknown
//! filter, test or function. A render that fails for a reason the values
//! could change (an operation on a value, a branch not taken) is not held
//! against the template.

use std::collections::{BTreeMap, BTreeSet};

use coffer::{SecretBytes, SecretData};
use coffer_sidecar::{
    config::SecretSpec,
    render::{Format, RenderError, render},
};

/// Every value in the check.
const PLACEHOLDER: &[u8] = b"0";
/// minijinja error kinds no value of the secret can avoid, as the sidecar
/// names them (`{kind:?} at line N`).
const FAILS_WHATEVER_THE_VALUES: [&str; 7] = [
    "UndefinedError",
    "UnknownFilter",
    "UnknownTest",
    "UnknownFunction",
    "UnknownMethod",
    "MissingArgument",
    "TooManyArguments",
];

/// Renders `spec`'s template with placeholder values: `Err` with the
/// sidecar's reason (kind and line, never a value) when it cannot render
/// whatever the secret holds. Specs without a template pass.
pub fn check(spec: &SecretSpec) -> Result<(), String> {
    if spec.format != Format::Template {
        return Ok(());
    }
    let Some(source) = spec.template.as_deref() else {
        return Ok(());
    };
    let data = match spec.key() {
        // The sidecar picks the key and renders it as a single value.
        Some(_) => SecretData::Bytes(SecretBytes::from(PLACEHOLDER)),
        None => SecretData::Map(
            named_keys(source)
                .into_iter()
                .map(|key| (key, SecretBytes::from(PLACEHOLDER)))
                .collect::<BTreeMap<_, _>>(),
        ),
    };
    match render(&data, &spec.render_spec()) {
        Err(RenderError::Template(reason))
            if FAILS_WHATEVER_THE_VALUES
                .iter()
                .any(|kind| reason.split(' ').next() == Some(*kind)) =>
        {
            Err(reason)
        }
        _ => Ok(()),
    }
}

/// The keys a template names: its undeclared variables but the map
/// `secret` and minijinja's globals (`range`, `dict`, ...), the attributes
/// it reads of `secret`, and the constant subscripts of `secret`.
fn named_keys(source: &str) -> BTreeSet<String> {
    let env = minijinja::Environment::new();
    let Ok(template) = env.template_from_str(source) else {
        // The sidecar's parser has checked the syntax already.
        return BTreeSet::new();
    };
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let mut keys: BTreeSet<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|name| name != "secret" && !globals.contains(name.as_str()))
        .collect();
    for lookup in template.undeclared_variables(true) {
        if let Some(key) = lookup.strip_prefix("secret.") {
            keys.insert(key.split('.').next().unwrap_or(key).to_string());
        }
    }
    keys.extend(subscripts(source));
    keys
}

/// The constant subscripts of `secret`: `db-password` of
/// `secret["db-password"]` or `secret['db-password']`.
fn subscripts(source: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("secret[") {
        rest = &rest[at + "secret[".len()..];
        let inner = rest.trim_start();
        if let Some(quote) = inner.chars().next().filter(|c| *c == '"' || *c == '\'')
            && let Some(end) = inner[1..].find(quote)
        {
            keys.push(inner[1..1 + end].to_string());
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one secret of a sidecar configuration whose entry is `entry`.
    fn parsed(entry: &str) -> SecretSpec {
        let yaml = format!("broker: x\noutputDir: /o\nsecrets:\n  - {entry}\n");
        let env = std::collections::HashMap::<String, String>::new();
        let config = coffer_sidecar::config::Config::parse(&yaml, &env).unwrap();
        config.secrets[0].clone()
    }

    fn spec(path: &str, template: &str) -> SecretSpec {
        parsed(&format!(
            "{{path: {path:?}, file: out, format: template, template: {template:?}}}"
        ))
    }

    fn verdict(path: &str, template: &str) -> Result<(), String> {
        check(&spec(path, template))
    }

    #[test]
    fn a_key_the_secret_does_not_give_is_refused() {
        assert_eq!(
            verdict("shop/db#password", "{{ source.password }}"),
            Err("UndefinedError at line 1".into())
        );
        assert!(verdict("shop/db#password", "x\n{{ user }}").is_err());
        assert!(verdict("shop/db#password", "{{ value }}").is_err());
    }

    #[test]
    fn an_attribute_of_a_value_is_refused() {
        assert!(verdict("shop/db", "{{ source.password }}").is_err());
        assert!(verdict("shop/db", "{{ secret.db.password }}").is_err());
    }

    #[test]
    fn unknown_filters_and_tests_are_refused() {
        assert!(verdict("shop/db", "{{ password | base64 }}").is_err());
        assert!(verdict("shop/db", "{% if password is secretish %}x{% endif %}").is_err());
    }

    #[test]
    fn what_the_sidecar_renders_passes() {
        for (path, template) in [
            ("shop/db#password", "{{ password }}"),
            ("shop/db#password", "{{ secret.password }}"),
            ("shop/db#password", "{{ secret[\"password\"] | tojson }}"),
            ("shop/db", "{{ user }}:{{ password }}"),
            ("shop/db", "{{ secret.user }}"),
            ("shop/db", "{{ secret['db-password'] }}"),
            (
                "shop/db",
                "{% for k, v in secret | dictsort %}{{ k }}={{ v }}\n{% endfor %}",
            ),
            ("shop/db", "{% for i in range(3) %}{{ i }}{% endfor %}"),
            ("shop/db", "{% set x = password %}{{ x | upper }}"),
            ("shop/db", "{% if tls is defined %}{{ tls }}{% endif %}"),
            ("shop/db#port", "{{ port | int + 1 }}"),
        ] {
            assert_eq!(verdict(path, template), Ok(()), "{path}: {template}");
        }
    }

    #[test]
    fn what_depends_on_the_values_is_not_held_against_a_template() {
        // `{{ password + 1 }}` fails on a string; a branch may not be taken.
        assert_eq!(verdict("shop/db", "{{ password + 1 }}"), Ok(()));
        assert_eq!(
            verdict("shop/db", "{% if mode == 'x' %}{{ nope.nope }}{% endif %}"),
            Ok(())
        );
    }

    #[test]
    fn specs_without_a_template_pass() {
        let spec = parsed("{path: shop/db, file: out}");
        assert_eq!(check(&spec), Ok(()));
    }
}
